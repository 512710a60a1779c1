"""Compare mkt's runtime against the obvious alternatives, in one run on one machine.

Models (same photos, batch 1 and batch 32, same thread count for everyone):

- torch eager fp32 ResNet-50 (random init: the weights do not change the speed),
- torch eager fp32 EfficientNet-Lite0 (ImageNet weights),
- ONNX Runtime fp32 and static int8 of both, exported with the project's exporter
  (``mkt.export.export_bundle``, fp32 kept, calibrated on the benchmark photos), run through the
  runtime's own ``Model`` (same session options as ``mkt classify``),
- the shipped bundle (``mkt/assets/bundle``, the trained Lite0, int8) when present,
- ``mkt`` end to end (decode + letterbox + int8 inference + top-k) at batch 1,
- torch eager end to end at batch 1 (ResNet-50 and Lite0): PIL decode + torchvision
  ``Resize(256)`` + ``CenterCrop(224)`` + the model (the usual torch recipe), the baseline of the
  issue's end-to-end targets (mkt >= 15x ResNet-50, >= 2x Lite0),
- OpenVINO (``pip install openvino``) running the shipped bundle's own ONNX files: fp32, and
  the int8 QDQ graph read directly (OpenVINO folds the QDQ pairs into its own int8 kernels),
  with top-1 agreement and embedding cosine against onnxruntime on the same photos.

``--core`` measures only what needs no export (torch eager rows, the shipped bundle under
onnxruntime and OpenVINO, the end-to-end rows): a few minutes instead of the exports'.

Every torch model runs behind the exporter's ``UInt8Model`` wrapper, so all rows compute the
same thing from the same ``uint8 [N,224,224,3]`` input (normalisation included).

Search (dim 256, cosine): hnswlib vs exact numpy (matmul + argpartition) vs FAISS
``IndexFlatIP`` at 10k / 100k / 1M vectors. Base vectors: the real embeddings of the shipped
catalogue index (read from its hnsw file), extended with perturbed copies (Gaussian noise,
renormalised) for the larger sizes; queries are fresh perturbed copies (not in the base).
Build time, memory, query p50/p95 (one query at a time), recall@10 against exact, and an ef
sweep for hnswlib.

    python benchmarks/compare.py            # full: 10k, 100k, 1M (~15-25 min on 2 cores)
    python benchmarks/compare.py --quick    # 10k only, few repeats

Writes ``benchmarks/results/compare.json``, ``compare.md`` and ``compare.png``. Needs the
train extra (torch, onnx) and ``faiss-cpu``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Searches are timed one query at a time on one thread for every method (hnswlib, numpy BLAS,
# FAISS): BLAS reads this when numpy loads. Ground truth is computed with the same single thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mkt.runtime import bench as B  # noqa: E402  (after the sys.path line, for a checkout)

RESULTS = REPO / "benchmarks" / "results"
LABELS = [
    "Appliances", "Baby & Kids Stuff", "Clothes, Footwear & Accessories",
    "Computers & Software", "DIY Tools & Materials", "Health & Beauty", "Home & Garden",
    "Music, Films, Books & Games", "Office Furniture & Equipment", "Other Goods",
    "Phones, Mobile Phones & Telecoms", "Sports, Leisure & Travel", "Video Games & Consoles",
]


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def rss_mb() -> float:
    """Current (not peak) resident set size of this process, MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return float("nan")


# ============================================================================ models


def write_checkpoint(arch: str, pretrained: str | None, path: Path) -> None:
    """A design.md checkpoint of an untrained two-headed model (for speed, weights are moot)."""
    import torch

    from mkt.training.models import build_model, get_arch

    spec = get_arch(arch)
    model = build_model(arch, len(LABELS), 256, pretrained=pretrained).eval()
    ckpt = {
        "format": "mkt-checkpoint/1", "arch": arch, "num_classes": len(LABELS),
        "labels": LABELS, "embed_dim": 256, "input_size": spec.input_size,
        "mean": list(spec.mean), "std": list(spec.std),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": {"pretrained": pretrained or "random init"}, "metrics": {},
        "data": {"clean_dir": "", "split_sha256": "", "split_seed": 0},
        "command": "benchmarks/compare.py", "epoch": 0, "best_metric": 0.0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


#: int8 configurations measured (name -> QuantConfig kwargs). ``u8s8rr``: uint8 activations,
#: int8 weights, reduce_range: onnxruntime's fast x86 path (VPMADDUBSW). ``u8u8``: uint8
#: activations and weights, what the exporter tries first since it is more accurate on AVX2.
INT8_CONFIGS = {
    "u8s8rr": {"activation_type": "QUInt8", "reduce_range": True},
    "u8u8": {"activation_type": "QUInt8", "weight_type": "QUInt8"},
}


def export(arch: str, pretrained: str | None, work: Path, photo_dir: Path, calib: int,
           force: bool, qname: str) -> tuple[Path, Path]:
    """(checkpoint, bundle dir) for ``arch`` with int8 config ``qname``, cached in ``work``."""
    from mkt.export import export_bundle
    from mkt.export.quantize import QuantConfig

    ckpt, bundle = work / f"{arch}.pt", work / f"{arch}-{qname}-bundle"
    if force or not ckpt.is_file():
        write_checkpoint(arch, pretrained, ckpt)
    if force or not (bundle / "manifest.json").is_file():
        log(f"export {arch} ({pretrained or 'random init'}, int8 {qname}) -> {bundle}")
        # One quantisation config (static QDQ, per-channel, minmax): the speed of the int8
        # graph is what is compared here, not the exporter's accuracy fallbacks.
        cfg = QuantConfig(f"minmax-{qname}", "minmax", **INT8_CONFIGS[qname])
        export_bundle(ckpt, bundle, photos=photo_dir, int8_only=False, calib=calib,
                      parity_limit=8, tries=[cfg], command="benchmarks/compare.py",
                      log=lambda m: None)
    return ckpt, bundle


def fold_bundle(src: Path, dst: Path) -> Path | None:
    """A copy of bundle ``src`` whose int8 model takes the uint8 photo straight into the first
    int8 Conv (benchmarks/fold_prepro.py); None when the graph does not allow it."""
    from fold_prepro import fold_uint8_preprocessing

    from mkt.runtime.bundle import file_hashes

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if not fold_uint8_preprocessing(src / "model.int8.onnx", dst / "model.int8.onnx"):
        return None
    man = json.loads((dst / "manifest.json").read_text())
    man["files"] = file_hashes(dst)
    (dst / "manifest.json").write_text(json.dumps(man, indent=2))
    return dst


def settle(seconds: float = 0.15) -> None:
    """Pause between two runners: onnxruntime's and OpenMP's worker threads spin for a while
    after a run, and would otherwise steal the CPU from the next runner in this process."""
    gc.collect()
    time.sleep(seconds)


def _cycle(arrays: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(arrays[np.arange(n) % len(arrays)])


def torch_e2e_runners(built: dict[str, Any], photos: list[Path]) -> dict[str, Any]:
    """``name -> run(path)``: the usual torch recipe end to end at batch 1: PIL decode, RGB,
    torchvision ``Resize(256)`` + ``CenterCrop(224)``, then the model (behind the exporter's
    uint8 wrapper, which normalises inside, as every other row)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from mkt.export.onnx_export import wrap_checkpoint
    from mkt.training.checkpoint import read_checkpoint

    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    out = {}
    for arch, (ckpt_path, _) in built.items():
        net = wrap_checkpoint(read_checkpoint(ckpt_path)).eval()

        def run(path: Path, net=net) -> Any:
            with Image.open(path) as im:
                x = np.array(tf(im.convert("RGB")), dtype=np.uint8)[None]
            with torch.inference_mode():
                return net(torch.from_numpy(x))

        out[f"torch eager fp32 {arch} end to end (PIL + torchvision)"] = run
    return out


def add_openvino(runners: list, bundle: Path, arrays: np.ndarray, threads: int) -> dict:
    """OpenVINO rows for the shipped bundle's fp32 and int8 ONNX files (when ``openvino`` is
    installed), and their agreement with onnxruntime on ``arrays``: top-1 agreement, embedding
    cosine (mean/min), max |logit| difference. Compile time is reported too (it is a cold
    start cost: OpenVINO compiles the graph for the CPU when a model is loaded)."""
    try:
        import openvino as ov
    except ImportError as e:
        log(f"OpenVINO rows skipped ({e}; pip install openvino)")
        return {"skipped": str(e)}
    from mkt.runtime.session import OpenVINOSession, cpu_session

    man = json.loads((bundle / "manifest.json").read_text())
    out_names = (man["outputs"].get("logits", "logits"), man["outputs"].get("embedding",
                                                                             "embedding"))
    parity: dict[str, Any] = {"version": ov.__version__}
    for variant in ("fp32", "int8"):
        path = bundle / man["models"][variant]
        # the backend mkt runs (fp32 held in f32, not OpenVINO's bf16 default on AVX512_BF16 /
        # AMX CPUs), compiled cold: its compiled-graph cache is off for this measurement
        t0 = time.perf_counter()
        ovs = OpenVINOSession(path, threads, cache=False)
        compile_s = time.perf_counter() - t0
        in_name = ovs.get_inputs()[0].name

        def run(x: np.ndarray, ovs=ovs, in_name=in_name) -> Any:
            return ovs.run(list(out_names), {in_name: x})

        sess = cpu_session(path, threads)
        la, ea, lb, eb = [], [], [], []
        for i in range(len(arrays)):
            a = sess.run(list(out_names), {sess.get_inputs()[0].name: arrays[i:i + 1]})
            b = run(arrays[i:i + 1])
            la.append(a[0]), ea.append(a[1]), lb.append(np.asarray(b[0])), eb.append(
                np.asarray(b[1]))
        la, ea, lb, eb = map(np.concatenate, (la, ea, lb, eb))
        cos = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
        parity[variant] = {
            "top1_agreement_vs_onnxruntime": round(float((la.argmax(1) == lb.argmax(1)).mean()),
                                                   4),
            "embedding_cosine_mean": round(float(cos.mean()), 5),
            "embedding_cosine_min": round(float(cos.min()), 5),
            "max_abs_logit_diff": round(float(np.abs(la - lb).max()), 5),
            "compile_s": round(compile_s, 3), "photos": len(arrays)}
        note = ("QDQ graph read directly" if variant == "int8" else "same ONNX file") + (
            f"; compile {compile_s:.2f} s")
        runners.append((f"OpenVINO {variant} shipped bundle", run, {
            "arch": man.get("arch"), "engine": f"openvino {ov.__version__}",
            "precision": variant, "model_bytes": path.stat().st_size, "note": note}))
    return parity


def bench_models(args: argparse.Namespace, photos: list[Path], work: Path) -> dict[str, Any]:
    import torch

    from mkt.export.onnx_export import wrap_checkpoint
    from mkt.runtime.images import load_letterboxed
    from mkt.runtime.model import Model
    from mkt.training.checkpoint import read_checkpoint

    torch.set_num_threads(args.threads)
    arrays = np.stack([load_letterboxed(p, 224) for p in photos])
    photo_dir = work / "photos"
    if photo_dir.exists():
        shutil.rmtree(photo_dir)
    photo_dir.mkdir(parents=True)
    for i, p in enumerate(photos):  # one flat folder: what the exporter's --photos wants
        (photo_dir / f"{i:05d}{p.suffix.lower()}").symlink_to(p.resolve())

    if args.core:  # checkpoints for the torch rows only, no ONNX export
        built = {}
        for arch, pre in (("resnet50", None), ("efficientnet_lite0", "imagenet")):
            ck = work / f"{arch}.pt"
            if args.re_export or not ck.is_file():
                write_checkpoint(arch, pre, ck)
            built[arch] = (ck, None)
    else:
        built = {
            "resnet50": export("resnet50", None, work, photo_dir, args.calib, args.re_export,
                               "u8s8rr"),
            "efficientnet_lite0": export("efficientnet_lite0", "imagenet", work, photo_dir,
                                         args.calib, args.re_export, "u8s8rr"),
        }
        lite_u8u8 = export("efficientnet_lite0", "imagenet", work, photo_dir, args.calib,
                           args.re_export, "u8u8")[1]
    reps, r32 = args.repeats, args.b32_repeats
    # (name, run(batch), meta). Everything is built first, then measured interleaved (round
    # robin, one pass each) so that every row sees the same machine load.
    runners: list[tuple[str, Any, dict[str, Any]]] = []

    def add_model(name: str, bdir: Path, variant: str, note: str = "") -> None:
        m = Model(bdir, variant=variant, threads=args.threads)
        runners.append((name, m.predict, {
            "arch": m.bundle.arch, "engine": "onnxruntime", "precision": variant,
            "model_bytes": m.bundle.model_path(variant).stat().st_size, "note": note}))

    if not args.core:
        for arch, (_, bdir) in built.items():
            add_model(f"ORT fp32 {arch}", bdir, "fp32")
            add_model(f"ORT int8 {arch}", bdir, "int8", "U8S8, reduce_range (minmax)")
        add_model("ORT int8 efficientnet_lite0 u8u8", lite_u8u8, "int8",
                  "U8U8 (the exporter's first try)")
        folded = fold_bundle(built["efficientnet_lite0"][1], work / "lite0-u8s8rr-folded")
        if folded is not None:
            add_model("ORT int8 efficientnet_lite0, uint8 input folded", folded, "int8",
                      "U8S8 rr + benchmarks/fold_prepro.py (proposal)")
    shipped = REPO / "mkt" / "assets" / "bundle"
    e2e_bundle = built["efficientnet_lite0"][1]
    parity: dict[str, Any] = {}
    if (shipped / "manifest.json").is_file():
        cal = json.loads((shipped / "manifest.json").read_text())["export"]["calibration"]
        add_model("ORT fp32 shipped bundle (trained Lite0)", shipped, "fp32",
                  "mkt/assets/bundle")
        add_model("ORT int8 shipped bundle (trained Lite0)", shipped, "int8",
                  f"mkt/assets/bundle, int8 try {cal.get('try')}")
        e2e_bundle = shipped
        parity = add_openvino(runners, shipped, arrays, args.threads)
    if e2e_bundle is None:
        raise SystemExit("--core needs the shipped bundle (mkt/assets/bundle)")
    for arch, (ckpt_path, _) in built.items():
        net = wrap_checkpoint(read_checkpoint(ckpt_path)).eval()

        def run(x: np.ndarray, net=net) -> Any:
            with torch.inference_mode():
                return net(torch.from_numpy(x))

        runners.append((f"torch eager fp32 {arch}", run, {
            "arch": arch, "engine": "torch eager", "precision": "fp32",
            "model_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
            "note": "random init" if arch == "resnet50" else "ImageNet weights"}))
    e2e_model = Model(e2e_bundle, threads=args.threads)
    runners.append(("mkt end to end", None, {}))
    torch_e2e = torch_e2e_runners(built, photos)

    x32 = _cycle(arrays, 32)
    for _name, run, _ in runners:  # warm-up: both batch shapes
        if run is not None:
            for _ in range(3):
                run(arrays[:1])
            run(x32)
    b1: dict[str, list[float]] = {n: [] for n, _, _ in runners}
    b32: dict[str, list[float]] = {n: [] for n, _, _ in runners if n != "mkt end to end"}
    e2e_only: list[float] = []
    b1_e2e: dict[str, list[float]] = {n: [] for n in torch_e2e}
    B.bench_classify_e2e(e2e_model, photos[:4], 1, warmup=1)
    for trun in torch_e2e.values():
        for p in photos[:3]:
            trun(p)
    for r in range(reps):
        log(f"batch 1, pass {r + 1}/{reps} ...")
        for name, run, _ in runners:
            settle()
            if run is None:  # mkt classify([path]) and its model-only twin, photo by photo
                for i, p in enumerate(photos):
                    b1[name].append(B.time_ms(lambda p=p: e2e_model.classify([p])))
                    e2e_only.append(B.time_ms(lambda i=i: e2e_model.predict(arrays[i:i + 1])))
                for tname, trun in torch_e2e.items():  # the torch recipes, same photos
                    settle()
                    for p in photos:
                        b1_e2e[tname].append(B.time_ms(lambda p=p, trun=trun: trun(p)))
                continue
            for i in range(len(arrays)):
                b1[name].append(B.time_ms(lambda i=i, run=run: run(arrays[i:i + 1])))
    for r in range(r32):
        log(f"batch 32, pass {r + 1}/{r32} ...")
        for name, run, _ in runners:
            if run is not None:
                settle()
                b32[name].append(B.time_ms(lambda run=run: run(x32)))
    rows: list[dict[str, Any]] = []
    for name, run, meta in runners:
        if run is None:
            continue
        med = float(np.median(b32[name]))
        rows.append({"name": name, **meta, "batch1_ms": B.summarize(b1[name]),
                     "batch32_ms": round(med, 2),
                     "batch32_runs_ms": [round(t, 2) for t in b32[name]],
                     "batch32_ms_per_photo": round(med / 32, 3),
                     "batch32_photos_per_s": round(32 * 1000 / med, 1)})
        log(f"  {name}: batch 1 p50 {rows[-1]['batch1_ms']['p50']:.2f} ms, "
            f"batch 32 {rows[-1]['batch32_photos_per_s']:.1f} photos/s")
    e2e = B.summarize(b1["mkt end to end"])
    e2e_model_ms = B.summarize(e2e_only)

    ref = next(r for r in rows if r["name"] == "torch eager fp32 resnet50")
    e2e_rows = {n: B.summarize(v) for n, v in b1_e2e.items()}
    for n, v in e2e_rows.items():
        log(f"  {n}: batch 1 p50 {v['p50']:.2f} ms")
    vs = {n: round(v["p50"] / e2e["p50"], 2) for n, v in e2e_rows.items()}
    for r in rows:
        r["speedup_b1_vs_resnet50_torch"] = round(
            ref["batch1_ms"]["p50"] / r["batch1_ms"]["p50"], 2)
        r["speedup_b32_vs_resnet50_torch"] = round(
            r["batch32_photos_per_s"] / ref["batch32_photos_per_s"], 2)
    return {
        "photos": len(photos), "threads": args.threads, "repeats": reps,
        "batch32_repeats": r32, "rows": rows,
        "mkt_e2e": {
            "bundle": str(e2e_bundle), "classify_e2e_ms": e2e, "model_only_ms": e2e_model_ms,
            "e2e_over_model": round(e2e["p50"] / e2e_model_ms["p50"], 3),
            "speedup_vs_resnet50_torch_b1": round(ref["batch1_ms"]["p50"] / e2e["p50"], 2),
            # the issue's end-to-end targets: photo file in, answer out, on both sides
            "torch_e2e_ms": e2e_rows,
            "speedup_vs_torch_e2e": vs,
        },
        "openvino_parity": parity,
        "notes": [
            "ResNet-50 has random weights (speed does not depend on them); Lite0 has ImageNet "
            "weights; both get the two mkt heads (13 logits + 256-d embedding).",
            "torch rows run the exporter's UInt8Model wrapper (uint8 NHWC in, normalisation "
            "in the model), the same computation as the ONNX graphs.",
            f"int8: static QDQ, per-channel, minmax, calibrated on the {len(photos)} "
            "benchmark photos (mkt.export.export_bundle, one quantisation try each): 'int8' "
            "rows are U8S8 with reduce_range (onnxruntime's fast x86 path), 'u8u8' has uint8 "
            "weights too. 'uint8 input folded': the float preprocessing chain replaced by a "
            "uint8 Transpose (bit-identical outputs, benchmarks/fold_prepro.py).",
            "batch 1: every photo x repeats, one at a time; batch 32: the photos cycled to 32. "
            "All rows are measured interleaved (round robin, one pass each) so that they see "
            "the same machine load.",
        ],
    }


# ============================================================================ search


def load_real_embeddings(index_dir: Path) -> tuple[np.ndarray, str]:
    """Every vector of a runtime index (hnswlib ``get_items``), L2-normalised."""
    from mkt.runtime.index import Index

    idx = Index.open(index_dir)
    h = idx._hnsw
    labels = h.get_ids_list()
    x = np.asarray(h.get_items(labels), dtype=np.float32)
    idx.close()
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x, f"{len(x)} real embeddings from {index_dir} (model {idx.model_id})"


def synthetic_embeddings(n: int, dim: int, seed: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, f"{n} synthetic clustered vectors (no shipped index found)"


def perturbed(src: np.ndarray, n: int, noise: float, rng: np.random.Generator,
              chunk: int = 100_000) -> np.ndarray:
    """``n`` copies of random rows of ``src`` plus Gaussian noise of expected norm ``noise``,
    renormalised (float32, made in chunks to bound the temporary memory)."""
    d = src.shape[1]
    out = np.empty((n, d), np.float32)
    sigma = np.float32(noise / np.sqrt(d))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        y = src[rng.integers(0, len(src), e - s)]
        y = y + sigma * rng.standard_normal((e - s, d), dtype=np.float32)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        out[s:e] = y
    return out


def make_base(real: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """The first ``n`` of the real vectors, then perturbed copies of them up to ``n``."""
    if n <= len(real):
        return np.ascontiguousarray(real[:n])
    rng = np.random.default_rng(seed)
    return np.concatenate([real, perturbed(real, n - len(real), noise, rng)])


def exact_topk(base: np.ndarray, q: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Ground truth: exact top-k by inner product (vectors are unit: = cosine), in chunks."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(base), chunk):
        sims = q @ base[s:s + chunk].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(sims, part, 1)
        cs, ci = np.concatenate([best_s, ps], 1), np.concatenate([best_i, part + s], 1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, 1), np.take_along_axis(ci, top, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, base: np.ndarray,
                queries: np.ndarray, eps: float = 1e-5) -> float:
    """recall@k: the share of the true top-k found. A found vector counts when it is one of
    the true top-k *or* exactly as similar as the k-th (ties: the catalogue has byte-identical
    photos, whose vectors are equal, so which of them is "the" top-k is arbitrary)."""
    k = truth.shape[1]
    hits = 0
    for f, t, q in zip(found, truth, queries, strict=True):
        f = np.asarray(f[:k], dtype=np.int64)
        f = f[f >= 0]
        kth = float(base[t[-1]] @ q)
        ok = set(t.tolist()) | {int(i) for i, v in zip(f, base[f] @ q, strict=True)
                                if v >= kth - eps}
        hits += min(k, len(set(f.tolist()) & ok))
    return hits / (len(truth) * k)


def time_queries(fn, queries: np.ndarray, k: int) -> tuple[dict[str, float], np.ndarray]:
    """One query at a time: latency summary (ms) and the ids found."""
    fn(queries[:1], k)
    found, ts = [], []
    for i in range(len(queries)):
        q = queries[i:i + 1]
        t0 = time.perf_counter()
        ids = fn(q, k)
        ts.append((time.perf_counter() - t0) * 1000)
        found.append(np.asarray(ids).reshape(-1)[:k])
    return B.summarize(ts), np.stack(found)


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    """hnswlib's own memory for ``n`` elements: level-0 block (links + vector + label) plus
    expected upper-level links, label map and per-element pointers (hnswalg.h layout)."""
    level0 = n * (2 * m * 4 + 4 + dim * 4 + 8)
    upper = int(n / (m - 1)) * (m * 4 + 4) if m > 1 else 0  # E[levels>0] = 1/(M-1) ... approx
    return level0 + upper + n * (8 + 4 + 48)


def bench_search(args: argparse.Namespace) -> dict[str, Any]:
    import faiss
    import hnswlib

    k = 10
    index_dir = Path(args.index) if args.index else REPO / "mkt" / "assets" / "index"
    if (index_dir / "index.json").is_file():
        real, source = load_real_embeddings(index_dir)
    else:
        real, source = synthetic_embeddings(10_000, 256, args.seed)
    dim = real.shape[1]
    log(f"search: {source}, dim {dim}")
    rng = np.random.default_rng(args.seed + 1)
    queries = perturbed(real, args.queries, args.noise, rng)
    # How much a perturbed copy moves: cosine to its source, and real nearest-neighbour cosine.
    probe = perturbed(real[:1000], 1000, args.noise, np.random.default_rng(7))
    nn_real = (real[:1000] @ real.T)
    np.fill_diagonal(nn_real[:, :1000], -1)
    stats = {
        "copy_to_source_cosine_mean": round(float(np.mean(np.sum(
            probe * real[np.random.default_rng(7).integers(0, 1000, 1000)], 1))), 3),
        "real_nn_cosine_median": round(float(np.median(nn_real.max(1))), 3),
    }
    del probe, nn_real
    faiss.omp_set_num_threads(1)
    out: dict[str, Any] = {
        "source": source, "dim": dim, "k": k, "queries": len(queries), "noise": args.noise,
        "noise_note": f"perturbed copy = normalise(v + N(0, ({args.noise}/sqrt(dim))^2 I))",
        "threads_build": args.build_threads, "threads_query": 1, "sizes": [], **stats,
        "hnsw": {"M": args.M, "ef_construction": args.ef_construction, "space": "cosine"},
    }
    for n in args.sizes:
        log(f"search n={n:,}: base ...")
        base = make_base(real, n, args.noise, args.seed + n)
        truth = exact_topk(base, queries, k)
        row: dict[str, Any] = {"n": n}
        nq_slow = min(len(queries), args.slow_queries)

        # exact numpy: the matrix is the index
        gc.collect()
        r0 = rss_mb()
        t0 = time.perf_counter()
        mat = np.ascontiguousarray(base, dtype=np.float32).copy()
        build = time.perf_counter() - t0

        def np_search(q: np.ndarray, kk: int, mat=mat) -> np.ndarray:
            s = mat @ q[0]
            part = np.argpartition(-s, kk - 1)[:kk]
            return part[np.argsort(-s[part])]

        lat, found = time_queries(np_search, queries[:nq_slow], k)
        row["numpy_exact"] = {"build_s": round(build, 3), "bytes": int(mat.nbytes),
                              "rss_delta_mb": round(rss_mb() - r0, 1), "query_ms": lat,
                              "recall_at_10": round(recall_at_k(found, truth[:nq_slow], base,
                                                                queries[:nq_slow]), 4)}
        del mat
        log(f"  numpy exact: p50 {lat['p50']:.2f} ms")

        # FAISS flat inner product
        gc.collect()
        r0 = rss_mb()
        t0 = time.perf_counter()
        fx = faiss.IndexFlatIP(dim)
        fx.add(base)
        build = time.perf_counter() - t0

        def faiss_search(q: np.ndarray, kk: int, fx=fx) -> np.ndarray:
            return fx.search(q, kk)[1]

        lat, found = time_queries(faiss_search, queries[:nq_slow], k)
        row["faiss_flat"] = {"build_s": round(build, 3), "bytes": int(fx.ntotal * fx.code_size),
                             "rss_delta_mb": round(rss_mb() - r0, 1), "query_ms": lat,
                             "recall_at_10": round(recall_at_k(found, truth[:nq_slow], base,
                                                                queries[:nq_slow]), 4)}
        del fx
        log(f"  faiss flat: p50 {lat['p50']:.2f} ms")

        # hnswlib (what mkt's Index uses), built with all threads, queried one at a time
        gc.collect()
        r0 = rss_mb()
        t0 = time.perf_counter()
        h = hnswlib.Index(space="cosine", dim=dim)
        h.init_index(max_elements=n, ef_construction=args.ef_construction, M=args.M,
                     random_seed=args.seed)
        h.set_num_threads(args.build_threads)
        h.add_items(base, np.arange(n))
        build = time.perf_counter() - t0
        rss_delta = rss_mb() - r0
        h.set_num_threads(1)
        log(f"  hnswlib build {build:.1f} s")
        sweep = []
        for ef in args.ef_sweep:
            h.set_ef(max(ef, k))

            def hnsw_search(q: np.ndarray, kk: int, h=h) -> np.ndarray:
                return h.knn_query(q, k=kk)[0]

            lat, found = time_queries(hnsw_search, queries, k)
            rec = recall_at_k(found, truth, base, queries)
            sweep.append({"ef": ef, "query_ms": lat, "recall_at_10": round(rec, 4)})
            log(f"  hnswlib ef={ef}: recall@10 {rec:.4f}, p50 {lat['p50']:.3f} ms")
        ok = [s for s in sweep if s["recall_at_10"] >= args.recall_target]
        chosen = min(ok, key=lambda s: s["ef"]) if ok else max(sweep,
                                                              key=lambda s: s["recall_at_10"])
        row["hnswlib"] = {
            "build_s": round(build, 2), "bytes": hnsw_bytes(n, dim, args.M),
            "rss_delta_mb": round(rss_delta, 1), "M": args.M,
            "ef_construction": args.ef_construction, "ef_sweep": sweep,
            "chosen_ef": chosen["ef"], "query_ms": chosen["query_ms"],
            "recall_at_10": chosen["recall_at_10"],
            "reaches_recall_target": bool(ok),
        }
        del h, base
        gc.collect()
        out["sizes"].append(row)
    return out


# ============================================================================ report


def fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def write_markdown(res: dict[str, Any], path: Path) -> None:
    L: list[str] = []
    m = res["machine"]
    L += ["# mkt: runtime comparison", "",
          f"Machine: {m['model']}, {m.get('physical_cores', '?')} physical / "
          f"{m['logical_cores']} logical cores (SIMD: {', '.join(m.get('simd', []))}), "
          f"load average at start {m.get('loadavg')}. "
          + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".",
          f"Run: `{res['command']}` ({res['date']}, {res['seconds']:.0f} s)."
          + "".join(f" The {part} section is from the run of {date}."
                    for part, date in res.get("carried_over", {}).items()), ""]
    md = res.get("models")
    if md:
        L += ["## Classification models", "",
              f"{md['photos']} real photos, {md['threads']} threads for every engine. "
              "Batch 1: p50/p95 over every photo x "
              f"{md['repeats']} repeats; batch 32: median of {md['batch32_repeats']} runs.", "",
              "| model | batch 1 p50 ms | p95 ms | x faster than ResNet-50 torch (b1) "
              "| batch 32 photos/s | x faster (b32) | model MB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for r in md["rows"]:
            mb = f"{r['model_bytes'] / 1e6:.1f}" if r["model_bytes"] else ""
            L.append(f"| {r['name']} | {fmt_ms(r['batch1_ms']['p50'])} | "
                     f"{fmt_ms(r['batch1_ms']['p95'])} | {r['speedup_b1_vs_resnet50_torch']}x | "
                     f"{r['batch32_photos_per_s']:.1f} | {r['speedup_b32_vs_resnet50_torch']}x | "
                     f"{mb} |")
        e = md["mkt_e2e"]
        L += ["", f"`mkt` end to end at batch 1 (decode + letterbox + int8 inference + top-k, "
              f"bundle `{Path(e['bundle']).name}`): p50 {fmt_ms(e['classify_e2e_ms']['p50'])} "
              f"ms, p95 {fmt_ms(e['classify_e2e_ms']['p95'])} ms; model only p50 "
              f"{fmt_ms(e['model_only_ms']['p50'])} ms (end to end / model = "
              f"{e['e2e_over_model']}x).", ""]
        if e.get("torch_e2e_ms"):
            L += ["End to end at batch 1, photo file in, answer out (same photos, same run):", "",
                  "| pipeline | p50 ms | p95 ms | mkt is x faster |", "|---|---:|---:|---:|",
                  f"| mkt classify (PIL draft decode + letterbox + ORT int8) | "
                  f"{fmt_ms(e['classify_e2e_ms']['p50'])} | "
                  f"{fmt_ms(e['classify_e2e_ms']['p95'])} | 1.0 |"]
            for n, v in e["torch_e2e_ms"].items():
                L.append(f"| {n} | {fmt_ms(v['p50'])} | {fmt_ms(v['p95'])} | "
                         f"{e['speedup_vs_torch_e2e'][n]}x |")
            L.append("")
        par = md.get("openvino_parity") or {}
        if par.get("fp32"):
            L += [f"OpenVINO {par['version']} on the shipped bundle's ONNX files, against "
                  "onnxruntime on the same photos:", "",
                  "| precision | top-1 agreement | embedding cosine mean / min "
                  "| max logit diff | compile s |", "|---|---:|---:|---:|---:|"]
            for v in ("fp32", "int8"):
                q = par[v]
                L.append(f"| {v} | {q['top1_agreement_vs_onnxruntime']} | "
                         f"{q['embedding_cosine_mean']} / {q['embedding_cosine_min']} | "
                         f"{q['max_abs_logit_diff']} | {q['compile_s']} |")
            L.append("")
        elif par.get("skipped"):
            L += [f"OpenVINO rows skipped: {par['skipped']}.", ""]
        by = {r["name"]: r for r in md["rows"]}
        rn = by["torch eager fp32 resnet50"]
        sentences = []
        for name in ("ORT int8 efficientnet_lite0, uint8 input folded",
                     "ORT int8 efficientnet_lite0", "ORT int8 efficientnet_lite0 u8u8",
                     "ORT int8 shipped bundle (trained Lite0)",
                     "ORT fp32 efficientnet_lite0", "torch eager fp32 efficientnet_lite0",
                     "ORT int8 resnet50", "ORT fp32 resnet50",
                     "OpenVINO int8 shipped bundle", "OpenVINO fp32 shipped bundle",
                     "ORT fp32 shipped bundle (trained Lite0)"):
            if name in by:
                r = by[name]
                sentences.append(
                    f"- {name} is {r['speedup_b1_vs_resnet50_torch']}x faster than ResNet-50 "
                    f"torch eager fp32 at batch 1 ({fmt_ms(r['batch1_ms']['p50'])} vs "
                    f"{fmt_ms(rn['batch1_ms']['p50'])} ms) and "
                    f"{r['speedup_b32_vs_resnet50_torch']}x at batch 32.")
        sentences.append(
            f"- `mkt classify` end to end is {e['speedup_vs_resnet50_torch_b1']}x faster than "
            f"ResNet-50 torch eager fp32 model-only (target >= 15x).")
        pairs = [("ORT int8 shipped bundle (trained Lite0)", "OpenVINO int8 shipped bundle"),
                 ("ORT fp32 shipped bundle (trained Lite0)", "OpenVINO fp32 shipped bundle"),
                 ("ORT int8 efficientnet_lite0", "ORT fp32 efficientnet_lite0"),
                 ("ORT int8 efficientnet_lite0", "ORT int8 efficientnet_lite0 u8u8"),
                 ("ORT int8 efficientnet_lite0, uint8 input folded",
                  "ORT int8 efficientnet_lite0"),
                 ("ORT fp32 efficientnet_lite0", "torch eager fp32 efficientnet_lite0"),
                 ("ORT int8 resnet50", "ORT fp32 resnet50"),
                 ("ORT fp32 resnet50", "torch eager fp32 resnet50")]
        for a, b in pairs:
            if a in by and b in by:
                b1 = by[b]["batch1_ms"]["p50"] / by[a]["batch1_ms"]["p50"]
                b32 = by[a]["batch32_photos_per_s"] / by[b]["batch32_photos_per_s"]
                sentences.append(f"- {a} vs {b}: {b1:.2f}x at batch 1, {b32:.2f}x at batch 32.")
        L += sentences + [""] + [f"- {n}" for n in md["notes"]] + [""]
    sr = res.get("search")
    if sr:
        L += ["## Similarity search", "",
              f"{sr['source']}; dim {sr['dim']}; larger sizes add perturbed copies "
              f"({sr['noise_note']}; a copy's cosine to its source is "
              f"{sr['copy_to_source_cosine_mean']} on average, a real photo's nearest other "
              f"photo has median cosine {sr['real_nn_cosine_median']}). {sr['queries']} "
              "queries (fresh perturbed copies, not in the base), one at a time on 1 thread for "
              "every method; "
              f"recall@{sr['k']} against exact top-{sr['k']}. hnswlib M={sr['hnsw']['M']}, "
              f"ef_construction={sr['hnsw']['ef_construction']}, built with "
              f"{sr['threads_build']} threads; its row uses the smallest ef reaching the recall "
              "target.", "",
              "| n | method | build s | memory MB (structure / RSS delta) | query p50 ms "
              "| p95 ms | recall@10 | x faster than numpy exact |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for row in sr["sizes"]:
            ex = row["numpy_exact"]["query_ms"]["p50"]
            for key, label in (("numpy_exact", "exact numpy (matmul)"),
                               ("faiss_flat", "FAISS IndexFlatIP"),
                               ("hnswlib", "hnswlib")):
                r = row[key]
                lab = label + (f" (ef={r['chosen_ef']})" if key == "hnswlib" else "")
                L.append(f"| {row['n']:,} | {lab} | {r['build_s']:.2f} | "
                         f"{r['bytes'] / 2**20:.0f} / {r['rss_delta_mb']:.0f} | "
                         f"{fmt_ms(r['query_ms']['p50'])} | {fmt_ms(r['query_ms']['p95'])} | "
                         f"{r['recall_at_10']:.4f} | {ex / r['query_ms']['p50']:.1f}x |")
        L += ["", "### hnswlib ef sweep", "",
              "| n | ef | recall@10 | query p50 ms | p95 ms |", "|---:|---:|---:|---:|---:|"]
        for row in sr["sizes"]:
            for s in row["hnswlib"]["ef_sweep"]:
                L.append(f"| {row['n']:,} | {s['ef']} | {s['recall_at_10']:.4f} | "
                         f"{fmt_ms(s['query_ms']['p50'])} | {fmt_ms(s['query_ms']['p95'])} |")
        L.append("")
    t = res.get("targets")
    if t:
        L += ["## Targets", "", "| target | value | met |", "|---|---:|---|"]
        for name, v in t.items():
            L.append(f"| {name} {v['target']} | {v['value']} | {'yes' if v['met'] else 'NO'} |")
        L.append("")
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def write_plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md, sr = res.get("models"), res.get("search")
    panels = (2 if md else 0) + (1 if sr else 0)
    if not panels:
        return
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.2))
    axes = np.atleast_1d(axes)
    i = 0
    if md:
        rows = md["rows"]
        names = [r["name"].replace("efficientnet_lite0", "Lite0").replace("resnet50", "R50")
                 .replace("torch eager", "torch").replace(" shipped bundle (trained Lite0)",
                                                          " shipped")
                 .replace(", uint8 input folded", " folded") for r in rows]
        colours = ["#c44" if "torch" in n else "#48c" if "fp32" in n else "#2a2"
                   for n in names]
        ax = axes[i]
        ax.barh(names, [r["batch1_ms"]["p50"] for r in rows], color=colours)
        ax.set_xscale("log")
        ax.set_xlabel("batch 1 latency p50, ms (log)")
        ax.set_title("Latency, batch 1")
        ax.invert_yaxis()
        i += 1
        ax = axes[i]
        ax.barh(names, [r["batch32_photos_per_s"] for r in rows], color=colours)
        ax.set_xlabel("photos/s at batch 32")
        ax.set_title("Throughput, batch 32")
        ax.invert_yaxis()
        i += 1
    if sr:
        ax = axes[i]
        for row in sr["sizes"]:
            sw = row["hnswlib"]["ef_sweep"]
            line = ax.plot([s["query_ms"]["p50"] for s in sw], [s["recall_at_10"] for s in sw],
                           "o-", label=f"hnswlib n={row['n']:,}")[0]
            c = line.get_color()
            ax.plot(row["numpy_exact"]["query_ms"]["p50"], 1.0, "s", color=c, mfc="none")
            ax.plot(row["faiss_flat"]["query_ms"]["p50"], row["faiss_flat"]["recall_at_10"],
                    "^", color=c, mfc="none")
        ax.axhline(0.95, ls=":", c="grey")
        ax.axvline(2.0, ls=":", c="grey")
        ax.set_xscale("log")
        ax.set_xlabel("query p50, ms (log); squares: numpy exact, triangles: FAISS flat")
        ax.set_ylabel("recall@10")
        ax.set_title("Search: hnswlib ef sweep vs exact")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"mkt benchmarks on {res['machine']['model']}, "
                 f"{res['machine']['logical_cores']} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    md = res.get("models")
    if md:
        e = md["mkt_e2e"]
        out["e2e_classify_vs_resnet50_torch_speedup"] = {
            "value": e["speedup_vs_resnet50_torch_b1"], "target": ">= 15",
            "met": e["speedup_vs_resnet50_torch_b1"] >= 15}
        out["e2e_over_model_int8"] = {"value": e["e2e_over_model"], "target": "<= 1.2",
                                      "met": e["e2e_over_model"] <= 1.2}
        for arch, want in (("resnet50", 15), ("efficientnet_lite0", 2)):
            name = f"torch eager fp32 {arch} end to end (PIL + torchvision)"
            v = (e.get("speedup_vs_torch_e2e") or {}).get(name)
            if v is not None:
                out[f"e2e_vs_{arch}_torch_e2e_speedup"] = {
                    "value": v, "target": f">= {want}", "met": v >= want}
    sr = res.get("search")
    if sr:
        big = max(sr["sizes"], key=lambda r: r["n"])
        hn = big["hnswlib"]
        out[f"hnsw_{big['n']}_recall_at_10"] = {
            "value": hn["recall_at_10"], "target": f">= {args.recall_target}",
            "met": hn["recall_at_10"] >= args.recall_target}
        out[f"hnsw_{big['n']}_query_p50_ms"] = {
            "value": hn["query_ms"]["p50"], "target": "<= 2", "met": hn["query_ms"]["p50"] <= 2}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k vectors only, few repeats")
    ap.add_argument("--photos", type=Path, action="append",
                    help="photo folder(s) (default: packaged examples + tests/fixtures/photos)")
    ap.add_argument("--max-photos", type=int, default=64)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                    help="hnswlib build threads (queries always run on one)")
    ap.add_argument("--repeats", type=int, default=None, help="batch-1 passes (default 5/2)")
    ap.add_argument("--b32-repeats", type=int, default=None, help="batch-32 runs (default 5/2)")
    ap.add_argument("--calib", type=int, default=64, help="int8 calibration photos")
    ap.add_argument("--sizes", type=str, default=None, help="e.g. 10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=None, help="search queries (default 500)")
    ap.add_argument("--slow-queries", type=int, default=100,
                    help="queries timed for the exact methods (they are slow at 1M)")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-sweep", type=str, default="10,16,24,32,48,64,96,128,192,256")
    ap.add_argument("--recall-target", type=float, default=0.95)
    ap.add_argument("--noise", type=float, default=0.5,
                    help="expected norm of the noise added to make perturbed copies")
    ap.add_argument("--index", type=Path, default=None, help="index dir (default: shipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp"))
                    / "mkt-compare", help="where exported bundles are cached")
    ap.add_argument("--re-export", action="store_true", help="export again even if cached")
    ap.add_argument("--core", action="store_true",
                    help="only the rows that need no export (torch eager, the shipped bundle "
                         "under onnxruntime and OpenVINO, end to end); implies --skip-search")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.core:
        args.skip_search = True
    q = args.quick
    args.repeats = args.repeats or (2 if q else 5)
    args.b32_repeats = args.b32_repeats or (2 if q else 5)
    args.queries = args.queries or (200 if q else 500)
    args.sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
                  else [10_000] if q else [10_000, 100_000, 1_000_000])
    args.ef_sweep = [int(s) for s in args.ef_sweep.split(",")]

    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "schema": "mkt-compare/1", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])]),
        "machine": B.cpu_info(), "versions": B.versions(), "quick": q,
    }
    try:
        import torch
        res["versions"].update(torch=torch.__version__)
        if not args.skip_search:
            import faiss
            res["versions"].update(faiss=faiss.__version__)
    except ImportError as e:
        log(f"missing dependency: {e} (pip install 'mkt[train]' faiss-cpu)")
        return 2
    if not args.skip_models:
        dirs = args.photos or B.default_photo_dirs()
        photos = B.list_photos(dirs, args.max_photos)
        if not photos:
            log("no photos")
            return 2
        args.work.mkdir(parents=True, exist_ok=True)
        res["models"] = bench_models(args, photos, args.work)
    if not args.skip_search:
        res["search"] = bench_search(args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-core" if args.core else "-quick" if q else ""
    prev_path = args.out / f"compare{suffix}.json"
    if (args.skip_models or args.skip_search) and prev_path.is_file():
        # A partial run keeps the other part from the previous results file (dated).
        prev = json.loads(prev_path.read_text())
        for part, skipped in (("models", args.skip_models), ("search", args.skip_search)):
            if skipped and part in prev:
                res[part] = prev[part]
                res.setdefault("carried_over", {})[part] = prev.get("date")
    res["targets"] = targets(res, args)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / f"compare{suffix}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, args.out / f"compare{suffix}.md")
    write_plot(res, args.out / f"compare{suffix}.png")
    log(f"wrote {args.out}/compare{suffix}.json, .md, .png in {res['seconds']:.0f} s")
    print((args.out / f"compare{suffix}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
