"""``python -m mkt.training.shipped_recipe --data D --runs R``: train the shipped model, timed.

Why: the default bundle's checkpoint comes from four steps (two teachers side by side, an
averaged teacher checkpoint, a distilled student, a retrieval head). Spelled out by hand in a
README they drift, and "within 90 minutes on two cores" is only a claim until a command
times it. This runs those steps with the shipped settings, one core a run where two run side
by side and every core otherwise, and writes ``R/timings.json``: each step's commands, wall
seconds and return codes (each command's log is ``R/<name>.log``), the total, and the CPU it
ran on. ``--dry-run`` prints the commands only. The smaller knobs (``--epochs``, ``--n-aug``,
``--teacher-epoch``, ``--retrieval-steps``) exist for smoke runs; the defaults are the
shipped recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Step:
    """Commands that run side by side; the next step starts when all of them have finished."""

    name: str
    commands: dict[str, list[str]]  # log name -> argv


def recipe_steps(data: str, runs: str, *, cores: int, epochs: int = 12, n_aug: int = 7,
                 teacher_epoch: int = 5, retrieval_steps: int = 600) -> list[Step]:
    """The shipped recipe (README "Reproduce everything"; levers.md round 3) as argv lists."""
    from mkt.training.train import TrainConfig, stem_cache_name

    py = "python"  # recorded and printed as such; _run_step runs this interpreter
    cache = f"{runs}/cache"

    def recipe(out: str, split: int, threads: int, *extra: str) -> list[str]:
        return [py, "-m", "mkt.training.recipe", "--data", data, "--cache-dir", cache,
                "--n-aug", str(n_aug), "--epochs", str(epochs), "--threads", str(threads),
                "--text-weight", "1", "--ema", "0.995", "--patience", "4", "--progress", "false",
                "--tensorboard", "false", "--out", f"{runs}/{out}", "--split", str(split), *extra]

    side = max(1, cores // 2)
    ema = f"{runs}/r2_s5/ema-{teacher_epoch:03d}.pt"
    student_cache = stem_cache_name(TrainConfig(data=data, out="", arch="efficientnet_lite0",
                                                split=11, n_aug=n_aug))
    return [
        Step("teachers", {
            "r1_s11": recipe("r1_s11", 11, side),
            # only its EMA weights of `teacher_epoch` teach: stop there, same LR schedule
            "r2_s5": recipe("r2_s5", 5, side, "--stop-after-epoch", str(teacher_epoch)),
        }),
        Step("teacher_ema", {"ema": [py, "-m", "mkt.training.ema_checkpoint",
                                     f"{runs}/r2_s5/epoch-{teacher_epoch:03d}.pt", ema]}),
        Step("student", {"s1_kd": recipe(
            "s1_kd", 11, cores, "--teachers", f"{runs}/r1_s11/best.pt,{ema}",
            "--kd-weight", "0.7", "--kd-temperature", "2")}),
        Step("retrieval_head", {"retrieval": [
            py, "-m", "mkt.training.retrieval", "--checkpoint", f"{runs}/s1_kd/best.pt",
            "--data", data, "--cache", f"{cache}/{student_cache}", "--out",
            f"{runs}/final_r/best.pt", "--threads", str(cores), "--steps", str(retrieval_steps)]}),
    ]


def _run_step(step: Step, runs: Path) -> dict:
    t0 = time.time()
    procs = {}
    for name, argv in step.commands.items():
        log = open(runs / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
        exe = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
        procs[name] = (subprocess.Popen(exe, stdout=log, stderr=subprocess.STDOUT), log)
    rcs = {}
    for name, (p, log) in procs.items():
        rcs[name] = p.wait()
        log.close()
    return {"step": step.name, "seconds": round(time.time() - t0, 1), "returncodes": rcs,
            "commands": {n: shlex.join(a) for n, a in step.commands.items()}}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mkt.training.shipped_recipe",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="cleaned data dir with its split")
    ap.add_argument("--runs", required=True, help="output dir (runs, caches, logs, timings)")
    ap.add_argument("--cores", type=int, default=_usable_cores(),
                    help="cores to use (default: this process's)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--n-aug", type=int, default=7)
    ap.add_argument("--teacher-epoch", type=int, default=5)
    ap.add_argument("--retrieval-steps", type=int, default=600)
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = ap.parse_args(argv)
    steps = recipe_steps(a.data, a.runs, cores=a.cores, epochs=a.epochs, n_aug=a.n_aug,
                         teacher_epoch=a.teacher_epoch, retrieval_steps=a.retrieval_steps)
    if a.dry_run:
        for step in steps:
            print(f"# {step.name}" + (" (side by side)" if len(step.commands) > 1 else ""))
            for argv_ in step.commands.values():
                print(shlex.join(argv_))
        return 0
    if not (Path(a.data) / "split.csv").exists():
        print(f"{a.data}: no split.csv (run `mkt data clean` and `mkt data split` first)",
              file=sys.stderr)
        return 2
    from mkt.runtime.bench import cpu_info

    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu": cpu_info(), "cores": a.cores, "steps": []}
    t0 = time.time()
    for step in steps:
        done = _run_step(step, runs)
        report["steps"].append(done)
        report["total_seconds"] = round(time.time() - t0, 1)
        (runs / "timings.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        failed = [n for n, rc in done["returncodes"].items() if rc != 0]
        if failed:
            print(f"{step.name}: {', '.join(failed)} failed; see {runs}/{failed[0]}.log",
                  file=sys.stderr)
            return 1
        print(f"{step.name}: {done['seconds']:.0f} s", flush=True)
    print(f"total {report['total_seconds'] / 60:.1f} min -> {runs}/final_r/best.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
