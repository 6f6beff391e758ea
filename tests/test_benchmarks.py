"""The benchmark scripts run end to end on tiny data and print what their docstrings promise."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def test_trial_memory_table_and_last_line():
    """One row per model, each a finished trial with its host peak at or above its resident set after the data
    load, and the last line naming the model with the highest peak."""
    data = "synthetic:n_users=60,n_items=80,text_dim=8,image_dim=8,seed=0"
    proc = run_benchmark("trial_memory.py", "--models", "BPR,VBPR", "--data", data, "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split()[:9] == ["model", "dataset", "device", "items", "load", "MB", "peak", "MB", "trial"]
    peaks = {}
    for line in lines[header + 1 : header + 3]:
        model, dataset, device, items, load_mb, peak_mb, trial_mb, *rest = line.split()
        assert (dataset, device, items, rest[-1]) == ("synthetic", "cpu", "80", "finished"), line
        assert 0 < float(load_mb) <= float(peak_mb), line
        assert abs(float(trial_mb) - (float(peak_mb) - float(load_mb))) <= 1, line  # rounded to whole MB
        peaks[model] = float(peak_mb)
    assert sorted(peaks) == ["BPR", "VBPR"]
    last = re.fullmatch(r"worst_peak_mb=(\d+) model=(\S+)", lines[-1])
    assert last, lines[-1]
    assert last[2] == max(peaks, key=peaks.get) and abs(float(last[1]) - max(peaks.values())) <= 1


def test_epoch_in_a_thread_in_cpu_seconds():
    """`--in-thread --clock cpu`: the header says how it measured, under which allocator settings, and each model
    gets a row of positive phase times; CPU seconds on a GPU are refused, naming why."""
    data = str(shared_data("ml100k-mm"))
    proc = run_benchmark("epoch.py", "--models", "BPR", "--epochs", "2", "--threads", "1", "--in-thread",
                         "--clock", "cpu", "--data", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "cpu seconds; in a thread; MALLOC_ARENA_MAX=" in lines[0] and "THP_MEM_ALLOC_ENABLE=" in lines[0], lines[0]
    model, epoch, sample, hook, forward, backward, step, *_ = lines[2].split()
    assert model == "BPR" and float(epoch) > 0 and float(forward) > 0 and float(backward) > 0, lines[2]
    refused = run_benchmark("epoch.py", "--clock", "cpu", "--device", "cuda", "--data", data, timeout=60)
    assert refused.returncode == 2 and "needs --device cpu" in refused.stderr


def test_worker_allocations_table_and_last_line():
    """One row per worker environment (none, ablate's, ablate's with one glibc arena), and the last line
    comparing ablate's with none; on a small tensor, so that it runs in seconds."""
    proc = run_benchmark("worker_allocations.py", "--rows", "256", "--repeats", "5", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("worker environment"))
    rows = lines[header + 1 : -1]
    names = [line.rsplit(maxsplit=2)[0] for line in rows]
    assert names == ["none (Ray's default)", "ablate", "ablate + MALLOC_ARENA_MAX=1"], rows
    measured = {name: float(line.rsplit(maxsplit=2)[1]) for name, line in zip(names, rows)}
    last = re.fullmatch(r"ablate_ms=([\d.]+) default_ms=([\d.]+)", lines[-1])
    assert last and float(last[1]) == measured["ablate"] and float(last[2]) == measured[names[0]]


def test_vs_mmrec_without_mmrec_source_says_what_it_needs(tmp_path):
    """MMRec's source is not part of the project: without it the comparison stops at once, naming what it needs."""
    proc = run_benchmark("vs_mmrec.py", "--mmrec-dir", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "does not hold MMRec's source" in proc.stderr and "github.com/enoche/MMRec" in proc.stderr


def test_gpu_packing_table_and_best_packing_line():
    """On CPU the packing benchmark says it measures CPU packing, prints one finished row per N with positive
    trials per hour and memory, a slowdown of 1 at N=1, and ends with the best N of each model, machine-readable."""
    data = shared_data("ml100k-mm")
    proc = run_benchmark("gpu_packing.py", "--device", "cpu", "--data", str(data), "--concurrency", "1,2",
                         "--epochs", "1", "--models", "BPR", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("CPU packing (no GPU measured)"), lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split() == ["model", "N", "wall", "s", "trial", "s", "slowdown", "trials/h", "host", "MB",
                                     "device", "MB", "resv", "MB", "status"]
    rows = {}
    for line in lines[header + 1 : header + 3]:
        model, n, wall, trial, slowdown, per_hour, host_mb, device_mb, reserved_mb, status = line.split()
        assert (model, device_mb, reserved_mb, status) == ("BPR", "-", "-", "finished"), line
        assert 0 < float(trial) <= float(wall) and float(slowdown) > 0 and float(host_mb) > 0, line
        # trials/h = N x 3600 / wall s, the wall seconds printed to 0.1 s and trials/h to whole trials
        assert int(n) * 3600 / (float(wall) + 0.05) - 0.5 <= float(per_hour) <= int(n) * 3600 / (float(wall) - 0.05) + 0.5
        rows[int(n)] = (float(slowdown), float(per_hour), float(host_mb))
    assert sorted(rows) == [1, 2] and rows[1][0] == 1.0
    assert rows[2][2] > rows[1][2]  # two processes hold more memory than one
    last = re.fullmatch(r"best_packing=BPR:(\d+)", lines[-1])
    assert last, lines[-1]
    assert int(last[1]) == max(rows, key=lambda n: rows[n][1])
    assert lines[-2].startswith(f"BPR: best N={last[1]}, "), lines[-2]


def test_floor_counts_the_sparse_products_and_names_the_worst_model():
    """On the ml100k-mm interactions LightGCN's floor is its sparse products (however the graph layer writes
    them) and its Adam step, no dense product; the epoch costs at least its floor, and the last line is machine-
    readable."""
    data = shared_data("ml100k-mm")
    proc = run_benchmark("floor.py", "--data", str(data), "--models", "LightGCN", "--repeats", "1", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    model, epoch, floor, ratio, gemm, sparse, top_k, step, batches, _ = lines[header + 1].split()
    assert model == "LightGCN" and int(batches) == 40, lines[header + 1]
    assert float(gemm) == 0 and float(top_k) == 0 and float(sparse) > 0 and float(step) > 0, lines[header + 1]
    assert abs(float(floor) - float(sparse) - float(step)) <= 0.002 and float(ratio) >= 1, lines[header + 1]
    assert lines[-1] == f"worst_ratio={ratio} model=LightGCN"
