"""Read the records of a W&B offline run file (``run-*.wandb``) back, for tests.

The file is W&B's transaction log: a 7-byte header (``:W&B``, a 2-byte magic, a version byte), then 32 KiB
blocks of LevelDB-log records (crc32 4 bytes, length 2, type 1: full / first / middle / last), each payload
a serialised ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record


def history(path: str | Path) -> list[dict]:
    """The logged metric rows (``wandb.log`` calls) of a run file, in order."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_info(path: str | Path) -> dict:
    """group, tags, job type and config of a run file."""
    out: dict = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, tags=list(record.run.tags), job_type=record.run.job_type)
        if kind in ("run", "config"):
            cfg = record.run.config if kind == "run" else record.config
            for item in cfg.update:
                out.setdefault("config", {})[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def exit_code(path: str | Path) -> int | None:
    """The exit code the run was finished with (None: never finished)."""
    codes = [record.exit.exit_code for record in records(path) if record.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def summary(path: str | Path) -> dict:
    """The run's summary as last written (``run.summary`` updates merged in order)."""
    out: dict = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
