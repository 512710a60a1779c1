"""``mkt bench``: how fast is the runtime on this machine. Registered by ``mkt.cli``.

Only typer and the standard library are imported at module level (``mkt --help`` and every
other command's cold start must not pay for numpy/onnxruntime); the measurements live in
:mod:`mkt.runtime.bench` (torch-free).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def bench_command(
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Model bundle dir (default: the packaged one)."),
    photos: list[Path] | None = typer.Option(
        None, "--photos", exists=True, file_okay=False,
        help="Folder of photos to use (repeatable). Default: the packaged examples + "
             "tests/fixtures/photos of a source checkout."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON here."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="onnxruntime intra-op threads (default: cores, <= 4)."),
    repeats: int = typer.Option(
        10, "--repeats", min=1, help="Timed passes over the photos (more: steadier p99)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed passes first."),
    max_photos: int = typer.Option(200, "--max-photos", min=1, help="Use at most this many."),
    index_photos: int = typer.Option(
        320, "--index-photos", min=1, help="Photos per indexing throughput run."),
    cold_runs: int = typer.Option(
        5, "--cold-runs", min=1, help="Fresh `mkt classify` processes to time."),
    variant: str | None = typer.Option(
        None, "--variant", help="Bundle model variant: int8 (default) or fp32."),
) -> None:
    """Benchmark the runtime: latency (end to end / model only), indexing throughput, 12 MP
    JPEG, cold start, peak RSS. Timings are medians after warm-up; the CPU is reported."""
    from mkt.runtime.bench import format_report, run_bench, to_json
    from mkt.runtime.errors import MktError

    def log(msg: str) -> None:
        if not as_json:
            sys.stderr.write(f"mkt: bench: {msg}\n")
            sys.stderr.flush()

    try:
        result = run_bench(
            bundle, photos=photos or None, max_photos=max_photos, threads=threads,
            repeats=repeats, warmup=warmup, index_photos=index_photos, cold_runs=cold_runs,
            variant=variant, log=log,
        )
    except MktError as e:
        sys.stderr.write(f"mkt: error: {' '.join(str(e).split())}\n")
        raise typer.Exit(e.exit_code) from None
    except (OSError, ValueError) as e:
        sys.stderr.write(f"mkt: error: {' '.join(str(e).split())}\n")
        raise typer.Exit(2) from None
    text = to_json(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(text + "\n")
    else:
        sys.stdout.write(format_report(result) + "\n")
    sys.stdout.flush()


__all__ = ["bench_command"]
