"""Bad input never becomes a wrong number: each defect is one clear error (exit code, the file and line or the
field, what was expected), and nothing already in the results folder changes."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablate.cli import main
from ablate.data import DataError, read_mmrec, write_mmrec
from ablate.data.mmrec import MAX_ID
from ablate.report import Options, ReportError, summarize
from ablate.results import ResultStore, UnreadableResults

from .report_rows import row


# ---------------------------------------------------------------- helpers
@pytest.fixture
def data(tmp_path, tiny):
    return write_mmrec(tiny, tmp_path / "toy")


@pytest.fixture
def results(tmp_path):
    """A results folder holding rows written before (the bad run must leave them exactly as they are)."""
    store = ResultStore(tmp_path / "results")
    for seed in range(2):
        store.append(row(seed=seed))
    return tmp_path / "results"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_line(directory: Path, number: int, change) -> Path:
    """Line `number` (1-based) of the dataset's .inter file replaced by change(fields)."""
    path = directory / "synthetic.inter"
    lines = path.read_text().split("\n")
    lines[number - 1] = "\t".join(change(lines[number - 1].split("\t")))
    path.write_text("\n".join(lines))
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_one_clear_error(argv, code, parts, results, capsys):
    """`argv` exits with `code`, its message holds each of `parts`, and `results` is unchanged."""
    before = snapshot(results)
    got, message = run_cli(argv, capsys)
    assert got == code, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "Traceback" not in message
    assert snapshot(results) == before


def trial_argv(data, results, *extra):
    return ["trial", "--data", data, "--model", "BPR", "--epochs", "1", "--results", results, *extra]


def both_commands(data, results, parts, capsys):
    """The data check (exit 1) and a trial on the data (exit 2) both stop with the same clear error."""
    assert_one_clear_error(["data", "check", data], 1, parts, results, capsys)
    assert_one_clear_error(trial_argv(data, results), 2, parts, results, capsys)


# ---------------------------------------------------------------- 1. silent data loss
@pytest.fixture(scope="module")
def large():
    """A dataset whose .inter file is larger than the CSV parser's 1 MiB blocks: where one stray quote used to
    swallow most of the file without an error."""
    from ablate.data import make_synthetic

    return make_synthetic(n_users=3000, n_items=1000, interactions_per_user=40, text_dim=4, image_dim=4, seed=0)


def test_a_stray_quote_is_an_error_naming_its_line_not_lost_rows(tmp_path, large, results, capsys):
    data = write_mmrec(large, tmp_path / "large")
    assert (data / "synthetic.inter").stat().st_size > 2**20
    inter = edit_line(data, 100, lambda f: ['"' + f[0], *f[1:]])
    both_commands(data, results, [str(inter), "line 100", "column 'userID'", "is not an integer",
                                  "expected a 0-based integer id"], capsys)


def test_quotes_are_characters_and_every_data_line_is_one_row(tmp_path, large):
    data = write_mmrec(large, tmp_path / "large")
    inter = data / "synthetic.inter"
    lines = inter.read_text().split("\n")
    # a quote in a column ablate does not read is kept as text, and no line is swallowed by it
    lines = [lines[0] + "\tnote"] + [line + ('\t"open' if i == 3 else "\tx") for i, line in enumerate(lines[1:]) if line]
    inter.write_text("\n".join(lines) + "\n")
    back = read_mmrec(data)
    assert back.n_interactions == large.n_interactions
    np.testing.assert_array_equal(back.items, large.items)


# ---------------------------------------------------------------- 2. untrained models recorded as finished
@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_below_one_stop_the_trial_before_any_work(data, results, epochs, capsys):
    argv = ["trial", "--data", data, "--model", "BPR", "--epochs", epochs, "--results", results]
    assert_one_clear_error(argv, 2, ["--epochs", "expected an integer >= 1", f"got {epochs}"], results, capsys)


@pytest.mark.parametrize("train, expected", [
    ("{epochs: -1}", "an integer >= 1"),
    ("{epochs: abc}", "an integer >= 1"),
    ("{lr: fast}", "a number > 0"),
    ("{patience: 2.5}", "an integer >= 1"),
    ("{ks: [5, 0]}", "a non-empty list of integers >= 1"),
    ("{mask_valid_at_test: 'yes'}", "true or false"),
    ("{epoch: 3}", "a training option"),
])
def test_every_train_field_of_a_grid_spec_is_checked_in_the_driver(tmp_path, results, train, expected, capsys):
    from ablate.cli_grid import grid_main

    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\ndatasets: [synthetic]\nmodels: [BPR]\ntrain: {train}\n")
    before = snapshot(results)
    code = grid_main(["--spec", str(spec), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and str(spec) in err and "field 'train." in err and expected in err, err
    assert snapshot(results) == before


def test_grid_epochs_override_is_checked_too(tmp_path, results, capsys):
    from ablate.cli_grid import grid_main

    before = snapshot(results)
    assert grid_main(["--preset", "demo", "--epochs", "0", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "'train.epochs'" in err and "an integer >= 1" in err
    assert snapshot(results) == before


# ---------------------------------------------------------------- 3. the report pools rows that must stay apart
def test_rows_of_other_data_or_training_settings_are_never_pooled(tmp_path, results, capsys):
    rows = [{**row(seed=s, value=0.1), "data_hash": "aaaa", "train_config": json.dumps({"epochs": 10})}
            for s in range(3)]
    rows += [{**row(seed=s, value=0.2), "key": f"copy-{s}", "data_hash": "bbbb",
              "train_config": json.dumps({"epochs": 10})} for s in range(3)]
    rows += [{**row(seed=s, value=0.3), "key": f"short-{s}", "data_hash": "aaaa",
              "train_config": json.dumps({"epochs": 1, "profile": True})} for s in range(3)]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",), paper=False))
    assert len(summary) == 3  # three baseline cells, none of them pooled
    assert (summary["seeds"] == "0,1,2").all() and (summary["n_finished"] == 3).all()
    assert sorted(summary["mean"].round(4)) == [0.1, 0.2, 0.3]
    assert summary["dataset"].nunique() == 2 and all(d.startswith("toy [") for d in summary["dataset"])
    # the command line reports the same three cells from a results folder, and leaves the folder as it was
    store = ResultStore(tmp_path / "mixed")
    for r in rows:
        store.append(r)
    before = snapshot(tmp_path / "mixed")
    code, message = run_cli(["report", tmp_path / "mixed", "--out", tmp_path / "out", "--metrics", "recall@20",
                             "--curves", "none", "--no-paper"], capsys)
    assert code == 0, message
    written = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert len(written) == 3 and (written["seeds"] == "0,1,2").all()
    assert snapshot(tmp_path / "mixed") == before
    # profiling does not change a result: it does not split a cell
    rows[6:] = [{**r, "train_config": json.dumps({"epochs": 10, "profile": True})} for r in rows[6:]]
    rows[6:] = [{**r, "data_hash": "cccc"} for r in rows[6:]]
    assert len(summarize(pd.DataFrame(rows), Options(metrics=("recall@20",), paper=False))) == 3


def test_an_id_only_model_is_shown_beside_the_feature_models_of_its_data():
    rows = [{**row(model="FREEDOM", seed=s), "data_hash": "feat", "data_source": "/d/toy"} for s in range(2)]
    rows += [{**row(model="BPR", seed=s, modalities=()), "key": f"bpr-{s}", "data_hash": "ids",
              "data_source": "/d/toy"} for s in range(2)]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",), paper=False))
    assert set(summary["dataset"]) == {"toy"} and set(summary["model"]) == {"FREEDOM", "BPR"}
    # an ID-only model whose rows are of two different data stays apart, as any other model
    rows[3] = {**rows[3], "data_hash": "other-ids"}
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",), paper=False))
    assert summary.loc[summary["model"] == "BPR", "dataset"].nunique() == 2


def test_rows_without_a_data_hash_are_told_apart_by_where_the_data_came_from():
    rows = [{**row(seed=0, value=v), "key": f"k{v}", "data_source": source}
            for v, source in ((0.1, "/data/ml100k"), (0.2, "/data/ml100k-copy"))]
    summary = summarize(pd.DataFrame(rows), Options(metrics=("recall@20",), paper=False))
    assert len(summary) == 2 and (summary["seeds"] == "0").all()


def test_a_seed_twice_in_one_cell_is_an_error(tmp_path, capsys):
    store = ResultStore(tmp_path / "twice")
    for s in range(2):
        store.append({**row(seed=s), "data_hash": "aaaa"})
    store.append({**row(seed=0), "key": "again", "data_hash": "aaaa", "data_source": "/elsewhere"})
    with pytest.raises(ReportError, match=r"seed 0 appears 2 times in the cell .*expected each seed once"):
        summarize(store.read(), Options(metrics=("recall@20",)))
    results = tmp_path / "twice"
    assert_one_clear_error(["report", results, "--out", tmp_path / "out"], 2,
                           ["seed 0 appears 2 times", "model FREEDOM", "baseline", "expected each seed once"],
                           results, capsys)


def test_id_only_models_are_known_from_their_rows_and_the_report_imports_no_model(tmp_path):
    rows = [row(model="BPR", seed=s, modalities=()) for s in range(2)]
    rows += [row(model="FREEDOM", seed=s) for s in range(2)]
    rows += [row(model="FREEDOM", condition="id_only", fill="noise", seed=s, value=0.05) for s in range(2)]
    pd.DataFrame(rows).to_parquet(tmp_path / "rows.parquet")
    code = ("import sys; from ablate.report import summarize, Options, read_rows; "
            f"s = summarize(read_rows({str(tmp_path / 'rows.parquet')!r}), Options(metrics=('recall@20',))); "
            "print(sorted(s.set_index(['model', 'condition'])['state'].items())); "
            "print(sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    states, imported = done.stdout.strip().split("\n")
    assert "(('BPR', 'id_only'), 'not_applicable')" in states and "(('FREEDOM', 'id_only'), 'ok')" in states
    assert imported == "[]"


# ---------------------------------------------------------------- 4. tracebacks instead of messages
def test_an_empty_npy_is_named(data, results, capsys):
    (data / "text_feat.npy").write_bytes(b"")
    both_commands(data, results, [str(data / "text_feat.npy"), "not a readable .npy file",
                                  "expected a 2-D float array"], capsys)


def test_a_huge_user_id_is_an_error_naming_its_line(data, results, capsys):
    inter = edit_line(data, 7, lambda f: [str(2**40), *f[1:]])
    both_commands(data, results, [str(inter), "line 7", "column 'userID'", str(2**40), "too large",
                                  f"up to {MAX_ID}"], capsys)


def test_an_unreadable_result_file_is_named_once_and_left_out(tmp_path, data, results, capsys):
    bad = results / "part-0123456789abcdef01234567-0123456789ab.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    store = ResultStore(results)
    with pytest.warns(UnreadableResults, match=bad.name):
        assert len(store.read()) == 2
    # the keys done come from file names alone (no file read); reading that key's row names the bad file
    with pytest.warns(UnreadableResults, match=bad.name):
        assert store.read_table(["key"], keys=["0123456789abcdef01234567"]).num_rows == 0
    assert not store.has("0123456789abcdef01234567")
    before = snapshot(results)
    with pytest.warns(UnreadableResults, match=bad.name):
        code, message = run_cli(["report", results, "--out", tmp_path / "report", "--curves", "none"], capsys)
    assert code == 0 and "Traceback" not in message
    assert snapshot(results) == before
    code, message = run_cli(trial_argv(data, results), capsys)  # another key: that file is not read
    assert code == 0 and "row appended" in message
    after = snapshot(results)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1  # one row added, none changed


@pytest.mark.parametrize("hp, parts", [
    ("nosuch=1", ["--hp nosuch", "expected a hyper-parameter of BPR", "reg_weight"]),
    ("reg_weight=abc", ["--hp reg_weight", "expected a finite number", "got 'abc'"]),
    ("embedding_size=1.5", ["--hp embedding_size", "expected an integer", "got 1.5"]),
])
def test_hyper_parameters_are_checked_against_the_model_before_any_work(data, results, hp, parts, capsys):
    assert_one_clear_error(trial_argv(data, results, "--hp", hp), 2, parts, results, capsys)


def test_fixed_hyper_parameters_of_a_grid_spec_are_checked(tmp_path):
    from ablate.grid import SpecError, load_spec

    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmodels: [BPR]\nhparams: {fixed: {BPR: {reg_weight: abc}}}\n")
    with pytest.raises(SpecError, match=r"bad.yaml: field 'hparams.fixed.BPR.reg_weight': expected a finite number"):
        load_spec(spec)
    spec.write_text("name: ok\nmodels: [BPR]\nhparams: {fixed: {BPR: {reg_weight: 0}}}\n")
    assert load_spec(spec).hparams.fixed == {"BPR": {"reg_weight": 0.0}}  # 0 and 0.0 are one setting


# ---------------------------------------------------------------- 5. wrong messages
def test_an_overflowing_item_id_is_named_not_reported_as_a_duplicate(data, results, capsys):
    inter = edit_line(data, 5, lambda f: [f[0], str(2**62), *f[2:]])
    both_commands(data, results, [str(inter), "line 5", "column 'itemID'", "too large"], capsys)
    _, message = run_cli(["data", "check", data], capsys)
    assert "repeat the pair" not in message


def test_a_gapped_item_id_is_blamed_on_the_inter_line_that_holds_it(data, tiny, results, capsys):
    inter = edit_line(data, 8, lambda f: [f[0], str(tiny.n_items + 3), *f[2:]])
    both_commands(data, results, ["_feat.npy: 90 rows", f"n_items={tiny.n_items + 4}",
                                  f"the largest itemID, {tiny.n_items + 3}, on line 8 of {inter}"], capsys)
    edit_line(data, 8, lambda f: [f[0], "5000", *f[2:]])  # far beyond the items there are
    both_commands(data, results, [str(inter), "line 8", "column 'itemID'", "id 5000 makes 5001 ids",
                                  "more ids unused than used", "--allow-sparse-ids"], capsys)


def test_a_feature_file_linking_out_of_the_dataset_folder_is_refused(tmp_path, data, results, capsys):
    outside = tmp_path / "elsewhere.npy"
    (data / "image_feat.npy").rename(outside)
    (data / "image_feat.npy").symlink_to(outside)
    both_commands(data, results, [str(data / "image_feat.npy"), "outside the dataset folder",
                                  "expected a regular file inside the folder"], capsys)
    _, message = run_cli(["data", "check", data], capsys)
    assert "unsafely" not in message


def test_a_truncated_npy_is_called_truncated(data, results, capsys):
    path = data / "image_feat.npy"
    path.write_bytes(path.read_bytes()[:-100])
    both_commands(data, results, [str(path), "truncated", "needs"], capsys)
    _, message = run_cli(["data", "check", data], capsys)
    assert "pickled" not in message


# ---------------------------------------------------------------- 6. lenient parsing
@pytest.mark.parametrize("written", ["13.0", "1.3e1", "+13", "0x0d", "13 13"])
def test_ids_must_be_written_as_integers(data, results, written, capsys):
    inter = edit_line(data, 6, lambda f: [written, *f[1:]])
    both_commands(data, results, [str(inter), "line 6", "column 'userID'", f"{written!r} is not an integer"],
                  capsys)


def test_a_huge_item_id_without_feature_files_is_refused_unless_sparse_ids_are_allowed(data, tiny, results, capsys):
    for path in data.glob("*.npy"):
        path.unlink()
    inter = edit_line(data, 4, lambda f: [f[0], str(2**40), *f[2:]])
    both_commands(data, results, [str(inter), "line 4", "column 'itemID'", "too large"], capsys)
    edit_line(data, 4, lambda f: [f[0], "1000000", *f[2:]])
    both_commands(data, results, [str(inter), "line 4", "id 1000000 makes 1000001 ids", "--allow-sparse-ids"],
                  capsys)
    code, message = run_cli(["data", "check", data, "--allow-sparse-ids"], capsys)
    assert code == 0 and "1000001" in message


# ---------------------------------------------------------------- corruptions, at random
def _small_dataset() -> tuple[bytes, np.ndarray]:
    """Single-digit ids, the largest item on the last line only, features for every item: every corruption of
    the kinds below makes the file one the format itself rejects, or leaves the same data."""
    rows = [(u, (u + k) % 9, label) for u in range(8) for k, label in ((0, 0), (1, 0), (2, 1), (3, 2))]
    rows.append((7, 9, 2))
    text = "userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{s}\n" for u, i, s in rows)
    features = np.arange(40, dtype=np.float32).reshape(10, 4)
    return text.encode(), features


CORRUPTIONS = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("quote"), st.integers(0, 10**6)),
    st.tuples(st.just("tab to space"), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
)


def corrupt(raw: bytes, kind: str, where: int) -> bytes:
    if kind == "delete":
        at = where % len(raw)
        return raw[:at] + raw[at + 1:]
    if kind == "quote":
        at = where % (len(raw) + 1)
        return raw[:at] + b'"' + raw[at:]
    if kind == "tab to space":
        tabs = [i for i, b in enumerate(raw) if b == 9]
        at = tabs[where % len(tabs)]
        return raw[:at] + b" " + raw[at + 1:]
    return raw[:where % (len(raw) + 1)]


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CORRUPTIONS)
def test_a_corrupted_file_loads_the_original_data_or_fails_with_a_data_error(corruption):
    raw, features = _small_dataset()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        np.save(folder / "text_feat.npy", features)
        (folder / "small.inter").write_bytes(raw)
        original = read_mmrec(folder)
        (folder / "small.inter").write_bytes(corrupt(raw, *corruption))
        try:
            back = read_mmrec(folder)
        except DataError as exc:
            assert "small.inter" in str(exc) or "text_feat.npy" in str(exc)
            return
    for name in ("users", "items", "split"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert (back.n_users, back.n_items) == (original.n_users, original.n_items)
    np.testing.assert_array_equal(back.features["text"]["default"], features)


def test_the_corruptions_reach_every_kind_of_outcome():
    """The property above is not vacuous: among the corruptions some load the same data and many fail."""
    raw, features = _small_dataset()
    outcomes = set()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        np.save(folder / "text_feat.npy", features)
        for kind in ("delete", "quote", "tab to space", "truncate"):
            for where in [*range(0, len(raw), 3), len(raw)]:
                (folder / "small.inter").write_bytes(corrupt(raw, kind, where))
                try:
                    read_mmrec(folder)
                    outcomes.add((kind, "same"))
                except DataError:
                    outcomes.add((kind, "error"))
    assert {("delete", "error"), ("quote", "error"), ("tab to space", "error"), ("truncate", "error"),
            ("truncate", "same")} <= outcomes


def _plain_parse(raw: bytes):
    """What a file says, read the plainest way (one row per non-blank line, tab-separated, digits only); None
    when it is not such a file."""
    try:
        lines = [line for line in raw.decode("utf-8").splitlines() if line]
    except UnicodeDecodeError:
        return None
    header = lines[0].split("\t") if lines else []
    if any(c not in header for c in ("userID", "itemID", "x_label")):
        return None
    where = [header.index(c) for c in ("userID", "itemID", "x_label")]
    values = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header) or not all(fields[i].strip().isdigit() for i in where):
            return None
        values.append([int(fields[i]) for i in where])
    return np.array(values, dtype=np.int64).reshape(-1, 3)


@settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CORRUPTIONS)
def test_a_corrupted_large_file_loads_what_it_says_or_fails_with_a_data_error(large_text, corruption):
    """On a file larger than the parser's blocks, with multi-digit ids (where a deleted digit or a cut at a line
    end leaves a valid file of other data): the reader returns exactly what the corrupted text says, or a
    DataError; never rows lost or merged, never a traceback."""
    raw = corrupt(large_text, *corruption)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "large.inter").write_bytes(raw)
        try:
            back = read_mmrec(folder, allow_sparse_ids=True)
        except DataError as exc:
            assert "large.inter" in str(exc)
            return
    said = _plain_parse(raw)
    assert said is not None, "loaded a file that is not plain tab-separated integers"
    np.testing.assert_array_equal(np.stack([back.users, back.items, back.split], axis=1), said)


class _Text(bytes):
    def __repr__(self) -> str:  # a failing example names its corruption, not a megabyte of file
        return f"<{len(self)} bytes of .inter text>"


@pytest.fixture(scope="module")
def large_text(large, tmp_path_factory) -> bytes:
    return _Text((write_mmrec(large, tmp_path_factory.mktemp("large") / "d") / "synthetic.inter").read_bytes())


def test_rows_record_the_modalities_read_and_a_hash_of_the_data(tmp_path, tiny):
    import dataclasses

    from ablate.trial import TrialConfig, run_trial

    train = {"epochs": 1, "eval_every": 1}
    bpr = run_trial(tiny, TrialConfig(model="BPR", train=train))
    vbpr = run_trial(tiny, TrialConfig(model="VBPR", train=train))
    assert json.loads(bpr["modalities"]) == [] and json.loads(vbpr["modalities"]) == ["image", "text"]
    copy = read_mmrec(write_mmrec(tiny, tmp_path / "copy"))  # the same data from another folder
    assert copy.content_hash(None, ["image", "text"]) == vbpr["data_hash"]
    assert tiny.content_hash(None, []) == bpr["data_hash"] != vbpr["data_hash"]
    items = tiny.items.copy()
    items[0] = (items[0] + 1) % tiny.n_items
    assert dataclasses.replace(tiny, items=items).content_hash(None, []) != bpr["data_hash"]
    text = {"default": tiny.features["text"]["default"] * 1.001}
    changed = dataclasses.replace(tiny, features={**tiny.features, "text": text})
    assert changed.content_hash(None, []) == bpr["data_hash"]  # BPR reads no features
    assert changed.content_hash(None, ["image", "text"]) != vbpr["data_hash"]


@pytest.mark.parametrize("name, content", [("rows.parquet", b"PAR1 cut short"), ("rows.csv", b'key,seed\n"a,0\n')])
def test_an_unreadable_rows_file_given_to_the_report_is_named(tmp_path, name, content, capsys):
    folder = tmp_path / "given"
    folder.mkdir()
    (folder / name).write_bytes(content)
    assert_one_clear_error(["report", folder / name, "--out", tmp_path / "out"], 2,
                           [str(folder / name), "not a readable", "file of result rows"], folder, capsys)


def test_a_bad_grid_spec_fails_before_ray_is_imported(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmodels: [BPR]\ntrain: {epochs: abc}\n")
    code = ("import sys; from ablate.cli import main; "
            f"code = main(['grid', '--spec', {str(spec)!r}, '--results', {str(tmp_path / 'r')!r}]); "
            "print(code, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "field 'train.epochs': expected an integer >= 1, got 'abc'" in done.stderr
    assert not (tmp_path / "r").exists()


def test_rows_from_before_the_data_hash_pair_with_newer_rows_of_the_same_source():
    old = [{**row(seed=s), "data_source": "/data/toy"} for s in range(2)]
    new = [{**row(condition="id_only", fill="noise", seed=s, value=0.05), "data_source": "/data/toy",
            "data_hash": "aaaa"} for s in range(2)]
    other = [{**row(condition="id_only", fill="noise", seed=s, value=0.07), "key": f"other-{s}",
              "data_source": "/data/toy-copy", "data_hash": "bbbb"} for s in range(2)]
    summary = summarize(pd.DataFrame(old + new + other), Options(metrics=("recall@20",), paper=False))
    paired = summary[(summary["condition"] == "id_only") & (summary["n_pairs"] == 2)]
    assert len(paired) == 1 and paired.iloc[0]["rel_change"] == pytest.approx(-0.5)
    assert summary["dataset"].nunique() == 2  # the copy stays apart, with no baseline of its own
