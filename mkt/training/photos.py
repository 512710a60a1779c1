"""Pad-resize a folder of photos to squares of one size, in parallel, idempotently.

A re-run skips photos already done, so an interrupted run is resumed by running it again, and
an unreadable file is reported and skipped instead of stopping thousands of good ones.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mkt.runtime.images import is_image_file
from mkt.runtime.preprocess import Preprocess


@dataclass
class PhotoReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _one(args: tuple[str, str, int]) -> tuple[str, str, str]:
    src, dst, size = args
    try:
        d = Path(dst)
        if d.exists() and d.stat().st_size > 0:
            with Image.open(d) as im:
                if im.size == (size, size) and im.mode == "RGB":
                    return ("skipped", src, "")
        out = Image.fromarray(Preprocess(size=size).load(src))
        tmp = d.with_suffix(".tmp.jpg")
        out.save(tmp, "JPEG", quality=95)
        os.replace(tmp, d)
        return ("done", src, "")
    except Exception as exc:  # noqa: BLE001 - report any failure per file, keep going
        return ("failed", src, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])


def prepare_photos(src: Path, out: Path, size: int = 224, workers: int | None = None,
                   progress: bool = True) -> PhotoReport:
    """Letterbox every photo in ``src`` into ``out/<stem>.jpg`` at ``size`` px."""
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if is_image_file(p))
    jobs = [(str(p), str(out / f"{p.stem}.jpg"), size) for p in files]
    report = PhotoReport()
    workers = workers or max(1, (os.cpu_count() or 2))
    from rich.progress import Progress

    with Progress(disable=not progress) as bar, ProcessPoolExecutor(workers) as pool:
        task = bar.add_task("photos", total=len(jobs))
        for status, path, why in pool.map(_one, jobs, chunksize=32):
            if status == "done":
                report.done += 1
            elif status == "skipped":
                report.skipped += 1
            else:
                report.failed.append((path, why))
            bar.advance(task)
    return report
