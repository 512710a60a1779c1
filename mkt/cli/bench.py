"""``mkt bench``: how fast is the runtime on this machine. The measurements live in
:mod:`mkt.runtime.bench`; only typer and the standard library load here."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..runtime.errors import MktError
from .options import BackendOpt, BundleOpt, ThreadsOpt, command


def register(app: typer.Typer) -> None:
    command(app, "bench")(bench_command)


def _parity(bundle: Path | None, photos: list[Path] | None, threads: int | None,
            as_json: bool, out: Path | None) -> None:
    """``mkt bench --parity``: int8 vs fp32 of one bundle on this CPU."""
    import json

    from ..runtime.bundle import load_bundle, packaged_asset
    from ..runtime.fsutil import atomic_write_text
    from ..runtime.images import is_image_file
    from ..runtime.parity import bundle_parity
    from ..runtime.precision import cpu_features

    b = load_bundle(bundle)
    dirs = photos or [packaged_asset("parity")]
    files = sorted(p for d in dirs for p in Path(d).iterdir() if is_image_file(p))
    if not files:
        raise typer.BadParameter("no photos found", param_hint="--photos")
    try:
        models = {v: b.model_path(v) for v in ("int8", "fp32")}
    except MktError as e:
        raise MktError(f"{e}; --parity needs a bundle with both precisions") from None
    r = bundle_parity(models, files, b.preprocess.load, threads=threads,
                      outputs=(b.logits_name, b.embedding_name))
    r["cpu"] = cpu_features()
    r["bundle"] = str(b.path)
    text = json.dumps(r, indent=None if as_json else 2)
    if out is not None:
        atomic_write_text(out, json.dumps(r, indent=2) + "\n")
    if as_json:
        sys.stdout.write(text + "\n")
    else:
        flags = [k for k, v in r["cpu"].get("flags", {}).items() if v]
        ms = r["ms_per_photo"]
        sys.stdout.write(
            f"int8 vs fp32 on {r['n']} photos, CPU {r['cpu'].get('model', '?')} "
            f"({', '.join(flags) or 'no AVX2'})\n"
            f"  top-1 agreement   {r['top1_agreement']:.4f}\n"
            f"  embedding cosine  mean {r['cosine_mean']:.4f}, 1st percentile "
            f"{r['cosine_p1']:.4f}, min {r['cosine_min']:.4f}\n"
            f"  ms per photo      int8 {ms['int8']:.2f}, fp32 {ms['fp32']:.2f} "
            f"(int8 {ms['fp32'] / ms['int8']:.2f}x)\n"
            f"  targets           {'met' if r['meets_targets'] else 'MISSED'} "
            f"{json.dumps(r['targets'])}\n")
    sys.stdout.flush()
    if not r["meets_targets"]:
        raise typer.Exit(1)


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
    backend: BackendOpt = None,
    parity: Annotated[bool, typer.Option(
        "--parity", help="Only compare the bundle's int8 model with its fp32 model on this "
        "CPU (top-1 agreement, embedding cosine, speed) on the packaged parity photos or "
        "--photos. Exit 1 when the targets are missed.")] = False,
) -> None:
    """Benchmark the runtime: latency (end to end / model only), indexing throughput, 12 MP
    JPEG, cold start, peak RSS.

    Timings are medians after warm-up; the CPU is reported. Progress goes to stderr; the
    report (or with --json one JSON object) to stdout.
    """
    from ..runtime.bench import QUICK, format_report, run_bench, to_json
    from ..runtime.fsutil import atomic_write_text

    t0 = time.monotonic()
    if parity:
        _parity(bundle, photos, threads, as_json, out)
        return

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
                       backend=backend, log=log, **settings)
    result["settings"]["quick"] = bool(quick)
    text = to_json(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    sys.stdout.write((text if as_json else format_report(result)) + "\n")
    sys.stdout.flush()
