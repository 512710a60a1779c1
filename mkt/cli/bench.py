"""``mkt bench``: how fast is the runtime on this machine. The measurements live in
:mod:`mkt.runtime.bench`; only typer and the standard library load here."""

from __future__ import annotations

import sys
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
    repeats: Annotated[int, typer.Option(
        "--repeats", min=1, metavar="N",
        help="Timed passes over the photos (more: steadier p99).")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, metavar="N",
                                        help="Untimed passes first.")] = 2,
    max_photos: Annotated[int, typer.Option("--max-photos", min=1, metavar="N",
                                            help="Use at most this many.")] = 200,
    index_photos: Annotated[int, typer.Option(
        "--index-photos", min=1, metavar="N", help="Photos per indexing throughput run.")] = 320,
    cold_runs: Annotated[int, typer.Option(
        "--cold-runs", min=1, metavar="N", help="Fresh `mkt classify` processes to time.")] = 5,
    variant: Annotated[str | None, typer.Option(
        "--variant", metavar="NAME", help="Bundle model variant: int8 (default) or fp32.")
    ] = None,
) -> None:
    """Benchmark the runtime: latency (end to end / model only), indexing throughput, 12 MP
    JPEG, cold start, peak RSS. Timings are medians after warm-up; the CPU is reported."""
    from ..runtime.bench import format_report, run_bench, to_json
    from ..runtime.fsutil import atomic_write_text

    def log(msg: str) -> None:
        if not as_json:
            sys.stderr.write(f"mkt: bench: {msg}\n")
            sys.stderr.flush()

    result = run_bench(
        bundle, photos=photos or None, max_photos=max_photos, threads=threads,
        repeats=repeats, warmup=warmup, index_photos=index_photos, cold_runs=cold_runs,
        variant=variant, log=log,
    )
    text = to_json(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    sys.stdout.write((text if as_json else format_report(result)) + "\n")
    sys.stdout.flush()
