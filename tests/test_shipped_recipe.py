"""The shipped recipe's runner: its four steps run, wired to one another, and are timed."""

import json

import pytest

torch = pytest.importorskip("torch")

from mkt.training.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from mkt.training.shipped_recipe import main, recipe_steps  # noqa: E402
from tests.synthetic import make_split_dataset  # noqa: E402


def test_the_readme_runs_the_shipped_settings():
    """README's reproduce block calls this runner, and its defaults are the shipped recipe's
    settings (levers.md round 3), so the two cannot drift apart."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "python -m mkt.training.shipped_recipe --data work/data" in readme
    steps = {s.name: s for s in recipe_steps("D", "R", cores=2)}
    student = " ".join(steps["student"].commands["s1_kd"])
    for setting in ("--n-aug 7", "--epochs 12", "--text-weight 1", "--ema 0.995",
                    "--patience 4", "--split 11", "--kd-weight 0.7", "--kd-temperature 2",
                    "--teachers R/r1_s11/best.pt,R/r2_s5/ema-005.pt"):
        assert setting in student, setting
    assert "--split 5 --stop-after-epoch 5" in " ".join(steps["teachers"].commands["r2_s5"])
    assert "--threads 1" in " ".join(steps["teachers"].commands["r1_s11"])  # side by side


def test_runner_trains_teachers_student_and_head(tmp_path, capsys):
    data = make_split_dataset(tmp_path / "ds", listings_per_cat=16)  # >= 256 train views
    runs = tmp_path / "runs"
    rc = main(["--data", str(data), "--runs", str(runs), "--cores", "2", "--epochs", "2",
               "--n-aug", "7", "--teacher-epoch", "0", "--retrieval-steps", "4"])
    assert rc == 0, capsys.readouterr().err
    t = json.loads((runs / "timings.json").read_text())
    assert [s["step"] for s in t["steps"]] == ["teachers", "teacher_ema", "student",
                                               "retrieval_head"]
    assert t["total_seconds"] >= sum(s["seconds"] for s in t["steps"]) - 1
    assert t["cpu"]["model"]
    # the second teacher stopped at its teaching epoch; the student learnt from both teachers
    assert (runs / "r2_s5" / "epoch-000.pt").exists()
    assert not (runs / "r2_s5" / "epoch-001.pt").exists()
    student = read_checkpoint(runs / "s1_kd" / "best.pt")
    assert student["config"]["teachers"] == (f"{runs}/r1_s11/best.pt,"
                                             f"{runs}/r2_s5/ema-000.pt")
    _, final = load_checkpoint(runs / "final_r" / "best.pt")
    assert final["retrieval_dim"]


def test_runner_stops_at_a_failed_step(tmp_path, capsys):
    """Too few photos for the retrieval head: the first three steps run, the head refuses in one
    line (no traceback) and the runner stops there, non-zero, naming the log."""
    data = make_split_dataset(tmp_path / "ds", listings_per_cat=4)
    runs = tmp_path / "runs"
    rc = main(["--data", str(data), "--runs", str(runs), "--epochs", "1", "--n-aug", "1",
               "--teacher-epoch", "0", "--retrieval-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "retrieval_head: retrieval failed" in err
    log = (runs / "retrieval.log").read_text()
    assert "fewer than the head's 256 outputs" in log and "Traceback" not in log
    t = json.loads((runs / "timings.json").read_text())
    assert [s["step"] for s in t["steps"]] == ["teachers", "teacher_ema", "student",
                                               "retrieval_head"]
    assert t["steps"][-1]["returncodes"] == {"retrieval": 2}
