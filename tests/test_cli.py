import subprocess
import sys

from ablate.cli import main
from ablate.data import write_mmrec
from ablate.results import ResultStore

from .conftest import shared_data


def test_trial_prints_table_and_appends_row(tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["trial", "--data", "synthetic:n_users=80,n_items=60", "--model", "VBPR", "--condition", "text_only",
            "--fill", "gaussian", "--epochs", "2", "--results", str(results)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in ("recall", "ndcg", "precision", "map", "valid@50", "test@5", "best epoch", "s/epoch", "finished"):
        assert word in out
    frame = ResultStore(results).read()
    assert len(frame) == 1 and frame.loc[0, "condition"] == "text_only" and frame.loc[0, "fill"] == "gaussian"
    assert main(argv) == 0 and "already done" in capsys.readouterr().out
    assert len(ResultStore(results).read()) == 1


def test_trial_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    argv = ["trial", "--data", "synthetic:n_users=80,n_items=60", "--model", "BPR", "--epochs", "1", "--quiet",
            "--results", str(tmp_path)]
    try:
        assert main([*argv, "--threads", "1"]) == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main([*argv, "--threads", "-1", "--force"]) == 2
    assert capsys.readouterr().err.strip() == "ablate: --threads: expected 0 (all cores) or more, got -1"


def test_unknown_model_is_one_clear_error_listing_the_registered_ones(tmp_path, capsys):
    assert main(["trial", "--model", "NoSuchModel", "--epochs", "1", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate: unknown model 'NoSuchModel'; registered: [") and "'FREEDOM'" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_does_not_load_torch():
    code = "import sys; from ablate.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_data_check_reports_counts_or_the_problem(tmp_path, tiny, capsys):
    directory = write_mmrec(tiny, tmp_path / "toy")
    assert main(["data", "check", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"users        {tiny.n_users}" in out and "text:" in out and "(default)" in out
    (directory / "synthetic.inter").write_text("userID\titemID\n0\t1\n")
    assert main(["data", "check", str(directory)]) == 1
    assert "missing column(s) ['x_label']" in capsys.readouterr().err


def test_data_check_on_baby():
    path = shared_data("amazon", "baby.inter")
    out = subprocess.run([sys.executable, "-m", "ablate.cli", "data", "check", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "users        19445" in out and "items        7050" in out and "interactions 160792" in out
