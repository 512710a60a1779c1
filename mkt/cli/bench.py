"""``mkt bench``: how fast is the runtime on this machine. The measurements live in
:mod:`mkt.runtime.bench`; only typer and the standard library load here."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .options import BundleOpt, ThreadsOpt, command


def register(app: typer.Typer) -> None:
    command(app, "bench")(bench_command)


def bench_command(
    bundle: BundleOpt = None,
    photos: Annotated[list[Path] | None, typer.Option(
        "--photos", exists=True, file_okay=False, metavar="DIR",
        help="Folder of photos to use (repeatable). Default: the packaged example photos.",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")
                       ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE",
                                             help="Also write the JSON here.")] = None,
    threads: ThreadsOpt = None,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", min=1, metavar="N",
        help="Timed passes over the photos; more give a steadier p99 (default 10, quick 3).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(
        "--warmup", min=0, metavar="N", help="Untimed passes first (default 2, quick 1).")
    ] = None,
    max_photos: Annotated[int | None, typer.Option(
        "--max-photos", min=1, metavar="N", help="Use at most this many photos (default 200, "
        "quick 10).")] = None,
    index_photos: Annotated[int | None, typer.Option(
        "--index-photos", min=1, metavar="N", help="Photos per indexing throughput pass "
        "(default 320, quick 32).")] = None,
    cold_runs: Annotated[int | None, typer.Option(
        "--cold-runs", min=1, metavar="N", help="Fresh `mkt classify` processes to time "
        "(default 5, quick 1).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="A first look in under 20 s: fewer passes and photos, noisier "
        "figures. The full run takes a few minutes on 2 cores.")] = False,
    variant: Annotated[str | None, typer.Option(
        "--variant", metavar="NAME",
        help="Precision to run: int8 or fp32 (default: the faster one on this CPU).")
    ] = None,
) -> None:
    """Benchmark the runtime: latency (end to end / model only), indexing throughput, 12 MP
    JPEG, cold start, peak RSS.

    Timings are medians after warm-up; the CPU is reported. Progress goes to stderr; the
    report (or with --json one JSON object) to stdout.
    """
    from ..runtime.bench import QUICK, format_report, run_bench, to_json
    from ..runtime.fsutil import atomic_write_text

    t0 = time.monotonic()

    def log(msg: str) -> None:  # stderr, also with --json (stdout holds only the JSON)
        sys.stderr.write(f"mkt: bench: [{time.monotonic() - t0:3.0f} s] {msg}\n")
        sys.stderr.flush()

    full = {"repeats": 10, "warmup": 2, "max_photos": 200, "index_photos": 320,
            "index_repeats": None, "phone_repeats": None, "cold_runs": 5}
    base = {**full, **QUICK} if quick else full
    given = {"repeats": repeats, "warmup": warmup, "max_photos": max_photos,
             "index_photos": index_photos, "cold_runs": cold_runs}
    settings = {**base, **{k: v for k, v in given.items() if v is not None}}
    log("quick run (fewer passes: noisier figures)" if quick else
        "full run: a few minutes on 2 cores (--quick: under 20 s)")
    result = run_bench(bundle, photos=photos or None, threads=threads, variant=variant,
                       log=log, **settings)
    result["settings"]["quick"] = bool(quick)
    text = to_json(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    sys.stdout.write((text if as_json else format_report(result)) + "\n")
    sys.stdout.flush()
