"""The grid on a local Ray (in this process): every cell's row, W&B offline files, shared features, secrets."""
import json
import os

import numpy as np
import pytest
import ray

from ablate.grid import load_spec
from ablate.results import ResultStore
from ablate.study import summary_table
from ablate.tune import run_grid

from tests import wandb_files
from tests.grid_helpers import (TINY, failing_run_trial, probed_run_trial, timed_run_trial,
                                vbpr_fails_after_one_evaluation, write_spec)

SECRETS = {"WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcdef",
           "AWS_SECRET_ACCESS_KEY": "awssecretAbCdEf0123456789xyz"}


@pytest.fixture(scope="module")
def local_ray():
    env = {k: os.environ.get(k) for k in ["WANDB_MODE", *SECRETS]}
    os.environ.update({"WANDB_MODE": "offline", **SECRETS})
    from ablate.tune import start_ray

    start_ray("local", num_cpus=4)
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_two_stage_grid_writes_every_row_streams_to_wandb_and_stores_no_secret(local_ray, tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", models=["BPR", "VBPR"], seeds=[0],
                                hparams={"search": "grid", "max_points": 2}))
    results = tmp_path / "results"
    run = run_grid(spec, results=str(results), progress_every=1)
    cells = run["cells"]
    rows = ResultStore(results).read()
    assert {c.key() for c in cells} <= set(rows["key"])
    assert run["grid"]["failed"] == 0 and run["search"]["ran"] == 4  # 2 models x 2 points
    # chosen values saved with the results, and each knockout row says how its values were chosen
    saved = ResultStore(results).child("hparams").read_records()
    assert set(saved["model"]) == {"BPR", "VBPR"} and set(saved["chosen_by"]) == {"valid_recall@20"}
    grid_rows = rows[rows["key"].isin({c.key() for c in cells}) & (rows["stage"] == "grid")]
    assert len(grid_rows) and all(json.loads(x)["metric"] == "valid_recall@20" for x in grid_rows["hparam_choice"])
    table = summary_table(cells, str(results))
    assert "test recall@20\n| model | baseline |" in table and "\n| VBPR | " in table and "\n| BPR | " in table
    # W&B: one offline run per trial, with the metrics of every evaluation, grouped and tagged
    files = sorted((results / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert len(files) == run["search"]["ran"] + run["grid"]["ran"]
    seen_groups = set()
    for path in files:
        info = wandb_files.run_info(path)
        history = [h for h in wandb_files.history(path) if "valid_recall@20" in h]
        assert len(history) >= 2, path  # two epochs evaluated, streamed one by one
        assert all(np.isfinite(h["valid_recall@20"]) for h in history)
        assert any(t.startswith("condition=") for t in info["tags"]) and any(t == "fill=none" or t == "fill=noise"
                                                                             for t in info["tags"])
        seen_groups.add(info["group"])
    assert seen_groups == {"synthetic/BPR", "synthetic/VBPR"}
    # no secret from the environment in results, Tune's stored state or W&B run files
    from tests.grid_helpers import text_of_tree

    blob = text_of_tree(results)
    for value in SECRETS.values():
        assert value.encode() not in blob
    # a rerun finds everything done and runs nothing
    again = run_grid(spec, results=str(results), progress_every=1)
    assert again["search"]["ran"] == 0 and again["grid"]["ran"] == 0 and again["grid"]["already"] == len(cells)


def test_features_are_shared_not_copied(local_ray, tmp_path):
    """Four GRCN trials at once on one node, on a 128 MiB image table that GRCN keeps frozen: each trial's private
    memory (USS, from /proc/<pid>/smaps via psutil) grows by far less than one copy while it reads every byte of
    it, and by less than half of one copy over the whole trial (model built, trained for an epoch, its best weights
    kept and evaluated): the model reads the table in Ray's shared memory and no state copies it."""
    big = "synthetic:n_users=80,n_items=2048,text_dim=8,image_dim=16384,seed=0"
    spec = load_spec(write_spec(tmp_path / "g.yaml", datasets=[big], models=["GRCN"], conditions=["baseline"],
                                seeds=[0, 1, 2, 3], train={"epochs": 1, "batch_size": 1024, "ks": [10, 20]}))
    results = tmp_path / "results"
    os.environ["WANDB_MODE"] = "disabled"
    try:
        run_grid(spec, results=str(results), run_trial=probed_run_trial, progress_every=1)
    finally:
        os.environ["WANDB_MODE"] = "offline"
    rows = ResultStore(results).read()
    assert len(rows) == 4 and rows["probe_read_only"].all() and (rows["status"] == "finished").all()
    feature_mb = float(rows["probe_feature_mb"].iloc[0])
    assert feature_mb > 120
    read = rows["probe_private_after_mb"] - rows["probe_private_before_mb"]
    trial = rows["probe_private_trial_peak_mb"] - rows["probe_private_before_mb"]
    print(f"features {feature_mb:.0f} MiB; private growth per trial (MiB) reading: {read.round(2).tolist()}, "
          f"whole trial: {trial.round(1).tolist()}")
    assert (read < 0.1 * feature_mb).all()
    assert read.sum() < 0.5 * feature_mb  # the node: four readers cost less than half of one copy
    # a private copy of the table alone would be 1.0; the trial's own tensors (GRCN's weights, optimizer state,
    # activations) are about 0.3 at this shape
    assert (trial < 0.5 * feature_mb).all()


def test_a_failed_trial_is_one_console_line_and_a_failed_wandb_run(local_ray, tmp_path, capfd):
    spec = load_spec(write_spec(tmp_path / "g.yaml", models=["BPR", "VBPR"], conditions=["baseline"], seeds=[0],
                                max_failures=0))
    results = tmp_path / "results"
    run = run_grid(spec, results=str(results), run_trial=vbpr_fails_after_one_evaluation, progress_every=1)
    out = "".join(capfd.readouterr())
    assert run["grid"]["failed"] == 1 and run["grid"]["ran"] == 1
    assert "Traceback" not in out, out[-3000:]
    [line] = [line for line in out.splitlines() if "trial failed:" in line]
    assert line.startswith("[grid] trial failed: VBPR-baseline-") and (
        "RuntimeError: planted failure after the first evaluation (traceback: ") in line
    error_file = line.rsplit("(traceback: ", 1)[1].rstrip(")")
    stack = open(error_file).read()  # the full traceback is where the line says
    assert 'File "' in stack and "report_then_fail" in stack and "planted failure" in stack
    assert any("1 failed (1 RuntimeError)" in line for line in out.splitlines() if line.startswith("[grid] "))
    runs = {wandb_files.run_info(p)["group"]: p for p in results.glob("wandb/offline-run-*/run-*.wandb")}
    assert wandb_files.exit_code(runs["synthetic/VBPR"]) == 1 and wandb_files.exit_code(runs["synthetic/BPR"]) == 0
    assert wandb_files.summary(runs["synthetic/VBPR"])["status"] == "failed"
    assert [h["_step"] for h in wandb_files.history(runs["synthetic/VBPR"]) if "loss" in h] == [0]


def test_a_failed_trial_writes_a_failed_row_that_a_rerun_retries(local_ray, tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", models=["VBPR"], seeds=[0], max_failures=0))
    results = tmp_path / "results"
    os.environ["WANDB_MODE"] = "disabled"
    try:
        run = run_grid(spec, results=str(results), run_trial=failing_run_trial, progress_every=1)
        store = ResultStore(results)
        assert run["grid"]["failed"] == 1 and len(store.failed_keys()) == 1
        failed = store.read()
        failed = failed[failed["status"] == "failed"].iloc[0]
        assert failed["condition"] == "id_only" and failed["error_type"] == "RuntimeError"
        assert "planted failure for seed 0" in failed["error_message"]
        assert failed["error_frame"].startswith("grid_helpers.py:") and "failing_run_trial" in failed["error_frame"]
        again = run_grid(spec, results=str(results), progress_every=1)  # the rerun retries the failed cell only
    finally:
        os.environ["WANDB_MODE"] = "offline"
    assert again["grid"]["ran"] == 1 and again["grid"]["failed"] == 0 and not store.failed_keys()
    rows = store.read()
    assert len(rows) == 3 and (rows["status"] == "finished").all()


def test_a_models_knockout_cells_start_while_a_slower_models_search_still_runs(local_ray, tmp_path):
    """Streaming stages: BPR's search ends first, and its knockout cells run while VBPR (6 s slower a trial)
    still searches; each model's hyper-parameters are still the best searched point on validation."""
    spec = load_spec(write_spec(tmp_path / "g.yaml", models=["BPR", "VBPR"], seeds=[0, 1, 2],
                                conditions=["baseline", "text_only"], hparams={"max_points": 2, "seeds": [0]}))
    results = tmp_path / "results"
    os.environ["WANDB_MODE"] = "disabled"
    try:
        run = run_grid(spec, results=str(results), run_trial=timed_run_trial, progress_every=1)
    finally:
        os.environ["WANDB_MODE"] = "offline"
    rows = ResultStore(results).read()
    assert run["search"]["ran"] == 4 and run["grid"]["ran"] == 2 + 5 and run["grid"]["failed"] == 0
    stage = {(m, s): rows[(rows["model"] == m) & (rows["stage"] == s)] for m in ("BPR", "VBPR") for s in ("search", "grid")}
    assert stage[("BPR", "grid")]["probe_started"].min() < stage[("VBPR", "search")]["probe_ended"].max()
    assert stage[("VBPR", "grid")]["probe_started"].min() >= stage[("VBPR", "search")]["probe_ended"].max()
    saved = ResultStore(results).child("hparams").read_records().set_index("model")
    for model in ("BPR", "VBPR"):
        search, choice = stage[(model, "search")], run["chosen"][(spec.dataset_source(TINY), model)]
        best = search[search["valid_recall@20"] == search["valid_recall@20"].max()]
        assert choice["score"] == best["valid_recall@20"].iloc[0]
        assert json.dumps(choice["hparams"], sort_keys=True) in set(best["hparams"])
        assert json.loads(saved.loc[model, "hparams"]) == choice["hparams"]
        knockout = rows[(rows["model"] == model) & rows["key"].isin({c.key() for c in run["cells"]})]
        assert len(knockout) == (3 if model == "BPR" else 6)
        assert set(knockout["hparams"]) == {json.dumps(choice["hparams"], sort_keys=True)}


def test_each_dataset_and_encoder_variant_is_an_object_of_its_own(local_ray):
    """A trial fetches its dataset's interactions and, per modality, only the variant it reads."""
    from dataclasses import replace

    from ablate.data import load
    from ablate.trial import TrialConfig
    from ablate.tune import fetch, share

    data = load(TINY)
    text = data.features["text"]
    default = data.default_variants.get("text", "default")
    data = replace(data, features={**data.features, "text": {**text, "alt": text[default] * 2}})
    other = load("synthetic:n_users=30,n_items=20,text_dim=4,image_dim=4,seed=1")
    shared = share({TINY: data, "other": other})
    assert set(shared) == {TINY, "other"} and set(shared[TINY]["features"]["text"]) == {default, "alt"}
    refs = [shared[TINY]["base"], *(r for v in shared[TINY]["features"].values() for r in v.values())]
    assert len({r.hex() for r in refs}) == len(refs) == 4  # interactions, two text variants, one image
    got = fetch(shared, TrialConfig(dataset=TINY, model="VBPR", encoders={"text": "alt"}))
    assert {m: list(v) for m, v in got.features.items()} == {"text": ["alt"], "image": list(data.features["image"])}
    assert np.array_equal(got.features["text"]["alt"], text[default] * 2)
    assert not got.features["text"]["alt"].flags.writeable and np.array_equal(got.users, data.users)
    assert fetch(shared, TrialConfig(dataset="other", model="BPR")).n_items == 20


@ray.remote(num_cpus=1)
def _large_allocations_in_a_thread(rows: int, cols: int, times: int) -> tuple[dict, list[int]]:
    """In a thread of a worker, as a trial runs: the worker's setting of torch's allocator, and the minor page
    faults of each allocation of a (rows, cols) float32 tensor, touched and freed."""
    import resource
    import threading

    import torch

    from ablate.train import THREADED_TRAINING_ENV, retain_freed_memory

    faults = []

    def work():
        retain_freed_memory()
        for _ in range(times):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            x = torch.zeros(rows, cols)
            x[::7].add_(1.0)
            del x
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return {k: os.environ.get(k) for k in THREADED_TRAINING_ENV}, faults


def test_a_trial_threads_largest_tensors_are_faulted_in_huge_pages(local_ray):
    """A 115 MB tensor (a fine-tuned 7,050 x 4,096 table's gradient) allocated in a worker's thread is mapped
    afresh each time in the thread's own glibc arena: 28,201 page faults of 4 KiB. In a worker with the
    environment `start_ray` sets, torch asks for huge pages, and the kernel faults it in 2 MiB at a time."""
    from ablate.train import THREADED_TRAINING_ENV

    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read()
    except OSError:
        thp = ""
    env, faults = ray.get(_large_allocations_in_a_thread.remote(7050, 4096, 6))
    assert env == {"THP_MEM_ALLOC_ENABLE": "1"} == THREADED_TRAINING_ENV
    if "[never]" in thp or not thp:
        pytest.skip(f"this kernel's transparent huge pages are off ({thp.strip() or 'no setting'}): "
                    f"torch's advice is ignored there, and the faults stay at 4 KiB pages")
    small_pages = 7050 * 4096 * 4 // 4096
    assert sorted(faults)[len(faults) // 2] < small_pages // 4, faults  # about 600 here
    _, without = ray.get(_large_allocations_in_a_thread.options(
        runtime_env={"env_vars": {"THP_MEM_ALLOC_ENABLE": "0"}}).remote(7050, 4096, 4))
    assert sorted(without)[len(without) // 2] >= small_pages // 2, without  # 28,201 here
