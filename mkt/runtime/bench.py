"""Runtime benchmarks behind ``mkt bench`` (torch-free: onnxruntime, numpy, Pillow, stdlib).

What is measured, on real photos (the packaged examples ``mkt/assets/examples``, or folders
given by the caller):

- ``classify_e2e_ms``: :meth:`Model.classify` on one photo path at a time (batch 1): read +
  decode + letterbox + inference + softmax/top-k. p50/p95/p99 over every photo x repeats.
- ``decode_ms``: read + decode + letterbox alone (what the end-to-end adds to the model).
- ``model_only_ms``: ``Model.predict`` on an already letterboxed ``uint8 [1,S,S,3]`` array.
- ``e2e_over_model``: p50 end-to-end / p50 model-only.
- ``indexing``: photos/s of decode + letterbox + embed at batch 32 (``Model.embed``, decoding in
  a thread pool), plus a pipelined variant that decodes the next batch while the model runs.
- ``phone_12mp``: a generated 4000x3000 JPEG (phone-like size and noise, EXIF orientation 6)
  classified end to end.
- ``cold_start``: ``python -m mkt.cli classify PHOTO --json`` as a fresh process (median wall
  time of a few runs) and its peak RSS (VmHWM), interleaved with the same command with the
  start-up caches off (``MKT_ORT_CACHE=0 MKT_HASH_CACHE=0``: what the first run on a machine
  pays, and what every run paid before them).
- ``serve_idle``: resident memory of a ``mkt serve`` app with model and index loaded, idle
  (``serve`` extra; skipped without it).

Every figure is a median (or percentile) of repeated runs after warm-up runs. The machine
(CPU model, cores, load average) is part of the result: timings mean little without it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MktError
from .images import is_image_file, load_letterboxed
from .model import Model

#: The issue's targets for this runtime (2-core laptop-class CPU). ``<=``/``>=`` per entry.
TARGETS: dict[str, tuple[str, float]] = {
    "e2e_over_model": ("<=", 1.2),
    "phone_12mp_e2e_p50_ms": ("<=", 30.0),
    "cold_start_median_s": ("<=", 0.4),
    "classify_peak_rss_mb": ("<=", 120.0),
    "indexing_photos_per_s": (">=", 250.0),
}

Log = Callable[[str], None]

#: ``mkt bench --quick``: a first look in well under 20 s on a 2-core machine (fewer passes,
#: fewer photos: noisier figures).
QUICK: dict[str, int] = {"repeats": 3, "warmup": 1, "max_photos": 10, "index_photos": 32,
                         "index_repeats": 1, "phone_repeats": 3, "cold_runs": 1}


def _quiet(_: str) -> None:
    pass


# -- machine --------------------------------------------------------------------------------


def cpu_info() -> dict[str, Any]:
    """CPU model name (``/proc/cpuinfo``), core counts, SIMD flags that matter to onnxruntime,
    cgroup CPU limit and load average. Works without ``/proc`` (then fewer fields)."""
    info: dict[str, Any] = {
        "model": platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": platform.platform(terse=True),
    }
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        info["usable_cores"] = info["logical_cores"]
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and val:
            info["model"] = val
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
            cores.add((phys, core))
        elif key == "flags" and not flags:
            flags = set(val.split())
        elif key == "cpu MHz" and "mhz" not in info:
            try:
                info["mhz"] = round(float(val))
            except ValueError:
                pass
    if cores:
        info["physical_cores"] = len(cores)
    if flags:
        wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
        info["simd"] = [f for f in wanted if f in flags]
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            info["cgroup_cpus"] = round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        pass
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return info


def versions() -> dict[str, str]:
    """Python and the runtime's libraries (:func:`mkt.runtime.bundle.library_versions`)."""
    from .bundle import library_versions

    return {"python": platform.python_version(),
            **library_versions(("mkt", "onnxruntime", "numpy", "pillow", "hnswlib"))}


# -- photos ---------------------------------------------------------------------------------


def default_photo_dirs() -> list[Path]:
    """The packaged example photos (``mkt/assets/examples``), if installed."""
    d = Path(__file__).resolve().parent.parent / "assets" / "examples"
    return [d] if d.is_dir() else []


def list_photos(dirs: Sequence[str | os.PathLike], limit: int | None = None) -> list[Path]:
    """Photo files of ``dirs`` (sorted, not recursive); at most ``limit`` spread evenly."""
    out: list[Path] = []
    for d in dirs:
        out += sorted(p for p in Path(d).iterdir() if p.is_file() and is_image_file(p))
    if limit is not None and len(out) > limit > 0:
        pick = np.linspace(0, len(out) - 1, int(limit)).round().astype(int)
        out = [out[i] for i in sorted(set(pick.tolist()))]
    return out


def make_phone_jpeg(
    path: str | os.PathLike,
    source: str | os.PathLike | None = None,
    size: tuple[int, int] = (4000, 3000),
    quality: int = 90,
    noise: float = 6.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a phone-like 12 MP JPEG: ``source`` (a real photo) upscaled to ``size`` with
    sensor-like Gaussian noise (so the file is as big as a phone's, ~3-5 MB, rather than a
    smooth upscale's few hundred kB), 4:2:0, and EXIF orientation 6 (portrait, as phones
    write it: the decoder must rotate). Returns ``{"path", "width", "height", "bytes", ...}``.
    """
    from PIL import Image

    w, h = size
    if source is not None:
        with Image.open(source) as im:
            base = im.convert("RGB").resize((w, h), Image.BICUBIC)
    else:  # a smooth gradient
        gx = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        gy = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
        base = Image.fromarray(np.broadcast_to((gx + gy) / 2, (h, w, 3)).astype(np.uint8))
    rng = np.random.default_rng(seed)
    a = np.asarray(base, dtype=np.int16)
    a = a + rng.normal(0.0, noise, size=(h, w, 1)).astype(np.int16)  # luma-like noise
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(path, "JPEG", quality=quality, subsampling=2, exif=exif.tobytes())
    return {
        "path": str(path), "width": w, "height": h, "bytes": Path(path).stat().st_size,
        "quality": quality, "exif_orientation": 6, "noise_sigma": noise,
        "source": str(source) if source is not None else "gradient",
    }


# -- statistics -----------------------------------------------------------------------------


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (linear interpolation, so p50 <= p95 <= p99), mean, min, max, n."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
        "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3), "n": int(a.size),
    }


def time_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def _timed_loop(calls: Sequence[Callable[[], Any]], repeats: int, warmup: int) -> list[float]:
    """Run every call ``warmup`` times untimed, then ``repeats`` passes timed one by one."""
    for _ in range(max(0, warmup)):
        for c in calls:
            c()
    gc.collect()
    out = []
    for _ in range(max(1, repeats)):
        for c in calls:
            out.append(time_ms(c))
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB (``ru_maxrss`` is kB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


# -- measurements ---------------------------------------------------------------------------


def bench_classify_e2e(
    model: Model, photos: Sequence[Path], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Batch-1 end-to-end classification latency (ms): one ``classify([path])`` per sample."""
    calls = [lambda p=p: model.classify([p]) for p in photos]
    return summarize(_timed_loop(calls, repeats, warmup))


def bench_latency(
    model: Model, photos: Sequence[Path], repeats: int, warmup: int = 2
) -> dict[str, Any]:
    """Batch-1 latencies, interleaved photo by photo so that all three see the same machine
    (on a shared machine, load changes between blocks would skew their ratio):
    ``classify_e2e_ms`` (``classify([path])``), ``decode_ms`` (read + decode + letterbox) and
    ``model_only_ms`` (``predict`` on the letterboxed array); ``e2e_over_model`` = p50 ratio."""
    size = model.input_size
    arrays = model.load(photos)
    for _ in range(max(5, warmup)):
        model.predict(arrays[:1])
    calls = []
    for i, p in enumerate(photos):
        calls += [lambda p=p: model.classify([p]), lambda p=p: load_letterboxed(p, size),
                  lambda i=i: model.predict(arrays[i : i + 1])]
    t = np.asarray(_timed_loop(calls, repeats, warmup)).reshape(-1, 3)
    out = {"classify_e2e_ms": summarize(t[:, 0]), "decode_ms": summarize(t[:, 1]),
           "model_only_ms": summarize(t[:, 2])}
    out["e2e_over_model"] = round(out["classify_e2e_ms"]["p50"] / out["model_only_ms"]["p50"], 3)
    return out


def embed_pipelined(
    model: Model, paths: Sequence[Any], batch: int = 32, workers: int | None = None
) -> np.ndarray:
    """Embed photos at ``batch``, decoding batch k+1 in a thread pool while batch k runs."""
    size = model.input_size
    chunks = [list(paths[i : i + batch]) for i in range(0, len(paths), batch)]
    if not chunks:
        return np.zeros((0, model.embedding_dim), np.float32)
    parts = []
    with ThreadPoolExecutor(max_workers=max(1, workers or model.threads)) as ex:
        futs = [ex.submit(load_letterboxed, p, size) for p in chunks[0]]
        for k in range(len(chunks)):
            arr = np.stack([f.result() for f in futs])
            if k + 1 < len(chunks):
                futs = [ex.submit(load_letterboxed, p, size) for p in chunks[k + 1]]
            parts.append(model.embed_arrays(arr))
    return np.concatenate(parts)


def bench_indexing(
    model: Model,
    photos: Sequence[Path],
    *,
    batch: int = 32,
    n_photos: int = 320,
    repeats: int = 3,
    workers: int | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Indexing throughput (photos/s): decode + letterbox + embed at ``batch``.

    ``index_loop`` (the reported figure): :func:`mkt.runtime.batch.iter_batches` + the model,
    what ``mkt index build`` runs (decoding the next batch while the model runs this one).

    The photo list is cycled up to ``n_photos`` (files are read from disk every time; they
    are in the page cache after the first pass, as in a real re-index). ``embed``: the public
    ``Model.embed`` (decode a batch in threads, then infer); ``pipelined``: decode the next
    batch while the current one is inferred. Also: model-only batch throughput and decode-only
    throughput with the thread pool, to show where the time goes.
    """
    n = max(batch, int(n_photos))
    paths = [photos[i % len(photos)] for i in range(n)]
    size = model.input_size
    w = workers or model.threads
    arr = model.load(paths[:batch], workers=w)

    model.embed(paths[: 2 * batch], batch_size=batch)  # warm-up (batch shapes, page cache)
    embed_pipelined(model, paths[: 2 * batch], batch, w)

    reps = max(1, n // batch)
    ex = ThreadPoolExecutor(max_workers=w)
    from .batch import iter_batches

    def index_loop() -> None:  # what `mkt index build` runs (mkt.runtime.indexing.embed_items)
        for b in iter_batches(paths, model, batch, workers=w):
            model.run(b.arrays())

    index_loop()  # warm-up
    variants: dict[str, tuple[Callable[[], Any], int]] = {
        "index_loop": (index_loop, n),
        "embed": (lambda: model.embed(paths, batch_size=batch), n),
        "pipelined": (lambda: embed_pipelined(model, paths, batch, w), n),
        "model_only": (lambda: [model.embed_arrays(arr) for _ in range(reps)], reps * batch),
        "decode_only": (lambda: list(ex.map(lambda p: load_letterboxed(p, size), paths)), n),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for r in range(max(1, repeats)):  # interleaved: every variant sees the same load
            log(f"  indexing pass {r + 1}/{max(1, repeats)} ({len(variants)} variants x "
                f"{n} photos)")
            for k, (fn, _count) in variants.items():
                gc.collect()
                times[k].append(time_ms(fn) / 1000.0)
    finally:
        ex.shutdown()
    out: dict[str, Any] = {"batch": batch, "photos": n, "workers": w, "threads": model.threads}
    for k, (_fn, count) in variants.items():
        med = float(np.median(times[k]))
        out[k] = {"photos_per_s": round(count / med, 1), "median_s": round(med, 4),
                  "runs_s": [round(t, 4) for t in times[k]]}
    best = max(("index_loop", "embed", "pipelined"), key=lambda k: out[k]["photos_per_s"])
    out["best"] = best
    # the figure: what `mkt index build` itself does (iter_batches, decoding one batch ahead)
    out["photos_per_s"] = out["index_loop"]["photos_per_s"]
    return out


def bench_phone_jpeg(
    model: Model, workdir: Path, source: Path | None, repeats: int, warmup: int = 2
) -> dict[str, Any]:
    """End-to-end classification of a generated 4000x3000 JPEG (see :func:`make_phone_jpeg`)."""
    info = make_phone_jpeg(workdir / "phone_12mp.jpg", source)
    p = Path(info["path"])
    size = model.input_size
    n = max(1, repeats)
    info["decode_ms"] = summarize(_timed_loop([lambda: load_letterboxed(p, size)], n, warmup))
    info["e2e_ms"] = summarize(_timed_loop([lambda: model.classify([p])], n, warmup))
    # What a decode without libjpeg's DCT scaling (draft) would cost: the reason draft is on.
    info["decode_full_ms"] = summarize(
        _timed_loop([lambda: load_letterboxed(p, size, draft=False)],
                    max(3, n // 4) if n >= 12 else 1, 1 if n >= 12 else 0)
    )
    return info


# Peak RSS of a child process: not ``wait4``'s ru_maxrss, which Linux carries over from the
# parent across fork/vfork + exec (it would report the benchmark's own hundreds of MB), but the
# child's own VmHWM (high-water RSS of its address space, fresh after exec), printed at exit.
_HWM_WRAPPER = (
    "import atexit, os, runpy, sys\n"
    "def _hwm():\n"
    "    try:\n"
    "        with open('/proc/self/status') as f:\n"
    "            for line in f:\n"
    "                if line.startswith('VmHWM:'):\n"
    "                    kb = line.split()[1]\n"
    "                    os.write(2, ('\\nMKT_BENCH_VMHWM_KB ' + kb + '\\n').encode())\n"
    "    except OSError:\n"
    "        pass\n"
    "atexit.register(_hwm)\n"
    "sys.argv = ['mkt', *sys.argv[1:]]\n"
    "runpy.run_module('mkt.cli', run_name='__main__', alter_sys=True)\n"
)


def _run_child(cmd: Sequence[str], env: dict[str, str], cwd: str) -> tuple[float, int, str]:
    """Run ``cmd``; return (wall seconds, exit code, stderr + stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        rc = subprocess.run(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd).returncode
        wall = time.perf_counter() - t0
        err.seek(0)
        out.seek(0)
        text = (err.read() + out.read()[-400:]).decode("utf-8", "replace")
    return wall, rc, text


def bench_cold_start(
    photo: Path,
    *,
    bundle: str | os.PathLike | None = None,
    threads: int | None = None,
    runs: int = 5,
) -> dict[str, Any]:
    """``python -m mkt.cli classify PHOTO --json`` as a new process, ``runs`` times after one
    untimed run (page cache, .pyc files): median wall time. Its peak RSS from one more run
    (VmHWM, see ``_HWM_WRAPPER``). Also the bare interpreter and ``import mkt.cli`` as
    baselines, to show where a slow start comes from."""
    env = dict(os.environ)
    env.pop("MKT_DEBUG", None)
    args = ["classify", str(Path(photo).resolve()), "--json"]
    if bundle is not None:
        args += ["--bundle", str(Path(bundle).resolve())]
    if threads:
        args += ["--threads", str(int(threads))]
    cmd = [sys.executable, "-m", "mkt.cli", *args]
    cwd = tempfile.gettempdir()  # the installed mkt, as a user runs it: not a checkout's

    def series(c: Sequence[str], n: int) -> tuple[list[float], int, str]:
        _run_child(c, env, cwd)  # untimed
        walls, rc, err = [], 0, ""
        for _ in range(max(1, n)):
            wall, rc, err = _run_child(c, env, cwd)
            walls.append(wall)
            if rc != 0:
                break
        return walls, rc, err

    # cached (the normal case after the first run on a machine) and uncached, interleaved so
    # that both see the same machine load
    env_off = {**env, "MKT_ORT_CACHE": "0", "MKT_HASH_CACHE": "0"}
    _run_child(cmd, env, cwd)  # untimed: fills the caches, page cache, .pyc files
    walls, off, rc, err = [], [], 0, ""
    for _ in range(max(1, runs)):
        wall, rc, err = _run_child(cmd, env, cwd)
        walls.append(wall)
        if rc != 0:
            break
        off.append(_run_child(cmd, env_off, cwd)[0])
    out: dict[str, Any] = {
        "command": " ".join(["python", *cmd[1:]]),
        "runs_s": [round(w, 4) for w in walls],
        "median_s": round(float(np.median(walls)), 4),
        "min_s": round(float(min(walls)), 4),
        "exit_code": rc,
        "no_cache_runs_s": [round(w, 4) for w in off],
        "no_cache_median_s": round(float(np.median(off)), 4) if off else None,
    }
    if rc != 0:
        out["stderr"] = err.strip()[-400:]
    _, _, err = _run_child([sys.executable, "-c", _HWM_WRAPPER, *args], env, cwd)
    kb = [int(line.split()[1]) for line in err.splitlines()
          if line.startswith("MKT_BENCH_VMHWM_KB ")]
    out["peak_rss_mb"] = round(kb[-1] / 1024, 1) if kb else None
    n_base = max(1, min(runs, 3))
    out["python_startup_s"] = round(float(np.median(series([sys.executable, "-c", "pass"],
                                                           n_base)[0])), 4)
    out["import_mkt_cli_s"] = round(float(np.median(series([sys.executable, "-c",
                                                            "import mkt.cli"], n_base)[0])), 4)
    return out


_SERVE_IDLE = (
    "import gc, sys, time\n"
    "try:\n"
    "    from mkt.serve import create_app\n"
    "except ImportError as e:\n"
    "    print('MKT_BENCH_SKIP', e); sys.exit(0)\n"
    "args = sys.argv[1:]\n"
    "app = create_app(args[0] if args and args[0] else None, eager=True)\n"
    "gc.collect(); time.sleep(0.5)\n"
    "for line in open('/proc/self/status'):\n"
    "    if line.startswith(('VmRSS:', 'VmHWM:')):\n"
    "        print('MKT_BENCH_' + line.split(':')[0], line.split()[1])\n"
)


def bench_serve_idle(bundle: str | os.PathLike | None = None) -> dict[str, Any]:
    """Resident memory (MB) of a process holding a ``mkt serve`` app with its model and index
    loaded (``create_app(eager=True)``), idle: what a server costs before any request. Needs
    the ``serve`` extra (``{"skipped": reason}`` without it)."""
    env = dict(os.environ)
    b = str(Path(bundle).resolve()) if bundle is not None else ""
    _, rc, text = _run_child([sys.executable, "-c", _SERVE_IDLE, b], env,
                             tempfile.gettempdir())
    vals = {}
    for line in text.splitlines():
        if line.startswith("MKT_BENCH_SKIP"):
            return {"skipped": line.split(" ", 1)[-1]}
        if line.startswith("MKT_BENCH_Vm"):
            k, v = line.split()
            vals[k] = round(int(v) / 1024, 1)
    if rc != 0 or "MKT_BENCH_VmRSS" not in vals:
        return {"skipped": f"exit {rc}: {text.strip()[-200:]}"}
    return {"idle_rss_mb": vals["MKT_BENCH_VmRSS"], "peak_rss_mb": vals.get("MKT_BENCH_VmHWM")}


def bench_model_batches(model: Model, photos: Sequence[Path], batches: Sequence[int] = (1, 8,
                        32, 64), repeats: int = 3) -> dict[str, float]:
    """Model-only photos/s at several batch sizes (interleaved): the ceiling that indexing
    cannot pass on this CPU whatever the decoding does."""
    arr = model.load(list(photos)[: max(batches)])
    arrs = {b: np.ascontiguousarray(arr[np.arange(b) % len(arr)]) for b in batches}
    for b in batches:
        model.predict(arrs[b])
    times: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(max(1, repeats)):
        for b in batches:
            reps = max(1, 64 // b)
            t = time_ms(lambda b=b, reps=reps: [model.predict(arrs[b]) for _ in range(reps)])
            times[b].append(t / (reps * b))
    return {f"b{b}": round(1000.0 / float(np.median(times[b])), 1) for b in batches}


# -- the whole run --------------------------------------------------------------------------


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"value", "target", "met"}}`` for each of :data:`TARGETS` that was measured."""
    values = {
        "e2e_over_model": result.get("e2e_over_model"),
        "phone_12mp_e2e_p50_ms": (result.get("phone_12mp") or {}).get("e2e_ms", {}).get("p50"),
        "cold_start_median_s": (result.get("cold_start") or {}).get("median_s"),
        "classify_peak_rss_mb": (result.get("cold_start") or {}).get("peak_rss_mb"),
        "indexing_photos_per_s": (result.get("indexing") or {}).get("photos_per_s"),
    }
    out = {}
    for name, (op, target) in TARGETS.items():
        v = values.get(name)
        if v is None:
            continue
        met = v <= target if op == "<=" else v >= target
        out[name] = {"value": v, "target": f"{op} {target:g}", "met": bool(met)}
    ceiling = (result.get("indexing") or {}).get("ceiling_photos_per_s")
    if "indexing_photos_per_s" in out and ceiling is not None:
        # the model alone at its best batch: indexing cannot pass it, whatever decoding does
        out["indexing_photos_per_s"]["model_only_ceiling"] = ceiling
        if ceiling < TARGETS["indexing_photos_per_s"][1]:
            out["indexing_photos_per_s"]["cause"] = (
                f"the model alone runs {ceiling:g} photos/s at its best batch on this CPU: "
                "the target needs a smaller/faster model or more cores")
    return out


def run_bench(
    bundle: str | os.PathLike | None = None,
    *,
    photos: Sequence[str | os.PathLike] | None = None,
    max_photos: int | None = 200,
    threads: int | None = None,
    repeats: int = 10,
    warmup: int = 2,
    index_photos: int = 320,
    index_batch: int = 32,
    cold_runs: int = 5,
    variant: str | None = None,
    backend: str | None = None,
    log: Log = _quiet,
    index_repeats: int | None = None,
    phone_repeats: int | None = None,
) -> dict[str, Any]:
    """Run every measurement; returns one JSON-able dict (see the module docstring).

    ``log``: called with one line before each stage (and each indexing pass), for progress.
    ``index_repeats`` (default ``min(repeats, 5)``) / ``phone_repeats`` (default
    ``max(5, 2 * repeats)``): passes of the indexing and 12 MP measurements;
    :data:`QUICK` has the settings of ``mkt bench --quick``."""
    dirs = [Path(p) for p in photos] if photos else default_photo_dirs()
    if not dirs:
        raise MktError("no photos to benchmark: pass --photos DIR")
    try:
        paths = list_photos(dirs, max_photos)
    except OSError as e:
        raise MktError(f"cannot list photos ({e.strerror or e})") from None
    if not paths:
        raise MktError(f"{', '.join(map(str, dirs))}: no photos found")
    t_start = time.perf_counter()
    result: dict[str, Any] = {"schema": "mkt-bench/1", "machine": cpu_info(),
                              "versions": versions()}
    model = Model(bundle, threads=threads, variant=variant, backend=backend)
    mpath = model.bundle.model_path(model.variant)
    result["bundle"] = {
        "path": str(model.bundle.path), "model_id": model.model_id, "arch": model.bundle.arch,
        "variant": model.variant, "file": mpath.name, "bytes": mpath.stat().st_size,
        "backend": model.backend,
    }
    result["settings"] = {
        "threads": model.threads, "repeats": repeats, "warmup": warmup,
        "photos": len(paths), "photo_dirs": [str(d) for d in dirs],
        "index_batch": index_batch, "index_photos": index_photos, "cold_runs": cold_runs,
    }
    index_repeats = max(1, index_repeats or min(repeats, 5))
    phone_repeats = max(1, phone_repeats or max(5, 2 * repeats))
    result["settings"].update(index_repeats=index_repeats, phone_repeats=phone_repeats)
    log(f"latency, batch 1: {len(paths)} photos x {repeats} (end to end, decode, model) ...")
    result.update(bench_latency(model, paths, repeats, warmup))
    log(f"indexing throughput, batch {index_batch}, {index_repeats} pass(es) ...")
    result["indexing"] = bench_indexing(
        model, paths, batch=index_batch, n_photos=index_photos, repeats=index_repeats, log=log
    )
    log("model-only ceiling at batch 1, 8, 32, 64 ...")
    ceiling = bench_model_batches(model, paths, repeats=index_repeats)
    result["indexing"]["model_only_by_batch"] = ceiling
    result["indexing"]["ceiling_photos_per_s"] = max(ceiling.values())
    with tempfile.TemporaryDirectory(prefix="mkt-bench-") as tmp:
        log("12 MP phone JPEG end to end ...")
        result["phone_12mp"] = bench_phone_jpeg(
            model, Path(tmp), paths[0], phone_repeats, warmup
        )
        result["phone_12mp"]["path"] = "<tmp>/phone_12mp.jpg"
        log(f"cold start of `mkt classify`, {cold_runs} runs ...")
        result["cold_start"] = bench_cold_start(
            paths[0], bundle=bundle, threads=threads, runs=cold_runs
        )
    log("mkt serve, idle memory ...")
    result["serve_idle"] = bench_serve_idle(bundle)
    result["peak_rss_mb"] = {
        "classify_process": result["cold_start"]["peak_rss_mb"],
        "bench_process": peak_rss_mb(),
    }
    result["targets"] = check_targets(result)
    try:  # a busy machine (load > cores) makes every figure above pessimistic: say so
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    result["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    log(f"done in {result['bench_seconds']:.0f} s")
    return result


def _pct(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:8.2f}  p95 {d['p95']:8.2f}  p99 {d['p99']:8.2f}  (n={d['n']})"


def format_report(r: dict[str, Any]) -> str:
    """Plain-text report of a :func:`run_bench` result."""
    m, s, b = r["machine"], r["settings"], r["bundle"]
    ix, ph, cs = r["indexing"], r["phone_12mp"], r["cold_start"]
    cores = f"{m.get('physical_cores', '?')} physical / {m['logical_cores']} logical"
    lines = [
        f"machine   {m['model']} ({cores} cores, usable {m.get('usable_cores')}; "
        f"simd {','.join(m.get('simd', [])) or '?'})",
        f"load      average {m.get('loadavg')} at start, {m.get('loadavg_end')} at end",
        "versions  " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        f"bundle    {b['arch']} {b['variant']} ({b['file']}, {b['bytes'] / 1e6:.1f} MB, "
        f"model_id {b['model_id']}), backend {b.get('backend', 'onnxruntime')}",
        f"settings  threads {s['threads']}, {s['photos']} photos, repeats {s['repeats']}, "
        f"warm-up {s['warmup']}",
        "",
        "latency, batch 1 (ms)",
        f"  classify end to end   {_pct(r['classify_e2e_ms'])}",
        f"  decode + letterbox    {_pct(r['decode_ms'])}",
        f"  model only            {_pct(r['model_only_ms'])}",
        f"  end to end / model    {r['e2e_over_model']:.2f}x (p50)",
        "",
        f"indexing, batch {ix['batch']} ({ix['photos']} photos, {ix['workers']} decode threads)",
        f"  index build loop      {ix['index_loop']['photos_per_s']:8.1f} photos/s "
        "(iter_batches: decode one batch ahead)",
        f"  Model.embed           {ix['embed']['photos_per_s']:8.1f} photos/s",
        f"  pipelined decode      {ix['pipelined']['photos_per_s']:8.1f} photos/s",
        f"  model only            {ix['model_only']['photos_per_s']:8.1f} photos/s",
        f"  decode only           {ix['decode_only']['photos_per_s']:8.1f} photos/s",
        "  model only by batch   " + ", ".join(
            f"{k} {v:.0f}" for k, v in (ix.get("model_only_by_batch") or {}).items())
        + " photos/s",
        "",
        f"12 MP JPEG ({ph['width']}x{ph['height']}, {ph['bytes'] / 1e6:.1f} MB, EXIF "
        f"orientation {ph['exif_orientation']})",
        f"  classify end to end   {_pct(ph['e2e_ms'])}",
        f"  decode (draft)        {_pct(ph['decode_ms'])}",
        f"  decode (full, no draft) p50 {ph['decode_full_ms']['p50']:.1f}",
        "",
        f"cold start  `{cs['command']}`",
        f"  median {cs['median_s']:.3f} s (min {cs['min_s']:.3f}; python alone "
        f"{cs['python_startup_s']:.3f} s, import mkt.cli {cs['import_mkt_cli_s']:.3f} s), "
        f"exit {cs['exit_code']}",
        f"  start-up caches off   median {cs.get('no_cache_median_s')} s (first run on a "
        "machine)",
        "serve idle  " + (f"RSS {r['serve_idle']['idle_rss_mb']} MB (model + index loaded)"
                          if "idle_rss_mb" in (r.get("serve_idle") or {}) else
                          f"skipped ({(r.get('serve_idle') or {}).get('skipped')})"),
        f"peak RSS    classify process {r['peak_rss_mb']['classify_process']} MB, "
        f"bench process {r['peak_rss_mb']['bench_process']} MB",
        "",
        "targets",
    ]
    for name, t in r["targets"].items():
        lines.append(f"  {'met ' if t['met'] else 'MISS'}  {name} = {t['value']} "
                     f"(target {t['target']})" + (f": {t['cause']}" if "cause" in t else ""))
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False)


__all__ = [
    "QUICK",
    "TARGETS",
    "bench_classify_e2e",
    "bench_cold_start",
    "bench_indexing",
    "bench_latency",
    "bench_phone_jpeg",
    "check_targets",
    "cpu_info",
    "default_photo_dirs",
    "embed_pipelined",
    "format_report",
    "list_photos",
    "make_phone_jpeg",
    "run_bench",
    "summarize",
]
