"""The results store: keys from file names, column-projected reads, failed rows, compaction (also cut short)."""
import json
import math
import subprocess
import sys
import textwrap

import pytest

from ablate.results import ResultStore, metric_columns


def _row(i: int, status="finished", value=0.5, at=None) -> dict:
    row = {"key": f"{i:024x}", "dataset": "d", "data_source": "d", "model": "BPR", "condition": "baseline",
           "fill": "none", "phase": "retrain", "seed": i, "encoders": "{}", "hparams": "{}", "train_config": "{}",
           "status": status, "reason": "", "best_epoch": 1, "epochs": 2, "seconds_per_epoch": 0.1,
           "train_seconds": 0.2, "eval_seconds": 0.1, "wall_seconds": 0.3,
           "curve": json.dumps([{"epoch": e, "loss": 1.0} for e in range(50)]), "ablate_version": "0",
           "torch_version": "0", "device": "cpu", "host": "h", "python": "3",
           "finished_at": at or f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"}
    for split in ("valid", "test"):
        for column in metric_columns(split):
            row[column] = value + i if status == "finished" else math.nan
    if status == "failed":
        row.update(error_type="RuntimeError", error_message="CUDA out of memory", error_frame="model.py:12 in forward")
    return row


def test_done_keys_come_from_file_names_without_reading_a_row(tmp_path):
    store = ResultStore(tmp_path)
    for i in range(5):
        store.append(_row(i))
    path = store.append(_row(7, status="failed"))
    for part in tmp_path.glob("part-*.parquet"):
        part.write_bytes(b"not parquet")  # a read would fail: names alone must answer
    assert store.done_keys() == {f"{i:024x}" for i in range(5)} and store.listings == 1
    assert store.has(f"{3:024x}") and not store.has(f"{7:024x}") and path.endswith(f"failed-{7:024x}.parquet")


def test_a_key_ending_in_a_dash_and_hex_digits_is_its_own_key(tmp_path):
    store = ResultStore(tmp_path)
    keys = ["copy-0", "copy-1", "short-2", "run-abc", "plain"]
    for i, key in enumerate(keys):
        store.append({**_row(i), "key": key})
    (tmp_path / "part-old-0123456789ab.parquet").write_bytes((tmp_path / "part-plain.parquet").read_bytes())
    # an older version's name (a 12-hex-digit suffix) still gives its key; any other suffix is part of the key
    assert store.done_keys() == set(keys) | {"old"}
    assert sorted(store.read()["key"]) == sorted(keys)  # the old file holds the row of "plain": one row per key


def test_reads_take_only_the_columns_asked_for_and_one_row_per_key(tmp_path):
    store = ResultStore(tmp_path)
    for i in range(4):
        store.append({**_row(i), "stage": "grid"})
    table = store.read_table(["key", "test_recall@20"])
    assert table.column_names == ["key", "test_recall@20"] and table.num_rows == 4
    assert sorted(store.read(["key", "stage"], keys=[f"{1:024x}", f"{2:024x}"])["key"]) == [f"{1:024x}", f"{2:024x}"]
    full = store.read()
    assert len(full) == 4 and "curve" in full.columns and (full["stage"] == "grid").all()


def test_a_failed_row_is_kept_counted_and_retried_then_superseded(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_row(1))
    store.append(_row(2, status="failed"))
    assert store.failed_keys() == {f"{2:024x}"} and store.done_keys() == {f"{1:024x}"}
    rows = store.read()
    failed = rows[rows["status"] == "failed"].iloc[0]
    assert failed["error_type"] == "RuntimeError" and "out of memory" in failed["error_message"]
    assert failed["error_frame"] == "model.py:12 in forward"
    store.append(_row(2, at="2026-02-01T00:00:00Z"))  # the rerun succeeded
    assert store.failed_keys() == set() and store.done_keys() == {f"{1:024x}", f"{2:024x}"}
    rows = store.read()
    assert len(rows) == 2 and (rows["status"] == "finished").all()


def test_compaction_merges_parts_and_every_reader_sees_the_same_rows(tmp_path):
    store = ResultStore(tmp_path)
    for i in range(30):
        store.append(_row(i, status="failed" if i % 10 == 3 else "finished"))
    before = store.read().sort_values("key").reset_index(drop=True)
    summary = store.compact(rows_per_file=12)
    assert summary == {"files": 30, "rows": 30, "deleted": 30}
    assert not list(tmp_path.glob("part-*")) and not list(tmp_path.glob("failed-*"))
    assert len(list(tmp_path.glob("compact-*.parquet"))) == 3
    after = store.read().sort_values("key").reset_index(drop=True)
    assert after[before.columns].equals(before)
    assert store.done_keys() == set(before.loc[before["status"] != "failed", "key"])
    assert store.failed_keys() == set(before.loc[before["status"] == "failed", "key"])
    store.append(_row(40))  # new parts beside compacted files, then compacted again
    store.compact()
    assert len(store.read()) == 31 and store.done_keys() >= {f"{40:024x}"}


KILLER = textwrap.dedent("""
    import os, signal, sys
    from ablate import results

    point, after = sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}

    def wrap(name):
        original = getattr(results.ResultStore, name)

        def call(self, *args):
            if name == point:
                calls["n"] += 1
                if calls["n"] > after:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args)
        setattr(results.ResultStore, name, call)

    wrap("_remove")
    if point == "publish":  # killed after the compacted file is written under its temporary name
        import pyarrow.parquet as pq
        write = pq.write_table

        def write_then_die(table, where, **kwargs):
            write(table, where, **kwargs)
            if ".compact-" in str(where):
                os.kill(os.getpid(), signal.SIGKILL)
        pq.write_table = write_then_die
    results.ResultStore(sys.argv[1]).compact(rows_per_file=10)
""")


@pytest.mark.parametrize("point, after", [("publish", 0), ("_remove", 0), ("_remove", 5), ("_remove", 15)])
def test_a_compaction_killed_half_way_loses_and_duplicates_nothing(tmp_path, point, after):
    store = ResultStore(tmp_path / "r")
    for i in range(25):
        store.append(_row(i, status="failed" if i == 4 else "finished"))
    before = store.read().sort_values("key").reset_index(drop=True)
    script = tmp_path / "kill.py"
    script.write_text(KILLER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "r"), point, str(after)], timeout=120)
    assert done.returncode == -9  # it was killed where asked
    middle = store.read().sort_values("key").reset_index(drop=True)
    assert middle[before.columns].equals(before)  # nothing lost, nothing seen twice
    assert store.done_keys() == set(before.loc[before["status"] != "failed", "key"])
    store.compact(rows_per_file=10)  # a second compaction finishes the job
    files = list((tmp_path / "r").iterdir())
    assert all(f.name.startswith("compact-") for f in files), files
    import pyarrow.parquet as pq

    keys = [k for f in files for k in pq.read_table(f, columns=["key"])["key"].to_pylist()]
    assert sorted(keys) == sorted(before["key"])  # every row once across the compacted files
    assert store.read().sort_values("key").reset_index(drop=True)[before.columns].equals(before)


def test_ablate_results_compact_command(tmp_path, capsys):
    from ablate.cli import main

    store = ResultStore(tmp_path)
    for i in range(3):
        store.append(_row(i))
    assert main(["results", "compact", str(tmp_path)]) == 0
    assert "3 row file(s) merged, 3 row(s) written" in capsys.readouterr().out
    assert [f.name.startswith("compact-") for f in tmp_path.iterdir()] == [True] and len(store.read()) == 3
