"""Fast frozen-network inference for training and evaluation on a CPU.

torch eager runs EfficientNet's depthwise convolutions slowly on a CPU (~40 ms a photo on two
cores); the same frozen graph in ONNX Runtime takes ~7 ms. So frozen parts (the stem whose
activations CPU training caches, and whole models at evaluation time) are exported to a
temporary ONNX file and run there. Trainable parts stay in torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mkt.runtime.preprocess import Preprocess


def ort_session(module: nn.Module, example: torch.Tensor, n_outputs: int = 1,
                threads: int | None = None):
    """Export ``module`` (eval mode) to a temp ONNX file and open it with onnxruntime."""
    import onnxruntime as ort

    module = module.eval()
    outs = [f"out{i}" for i in range(n_outputs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        with torch.no_grad():
            torch.onnx.export(module, (example,), path, input_names=["x"], output_names=outs,
                              dynamic_axes={"x": {0: "n"}, **{o: {0: "n"} for o in outs}},
                              opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.log_severity_level = 3
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def load_uint8(path: Path | str, size: int) -> np.ndarray:
    """A photo through the preprocessing contract (what the runtime feeds the model)."""
    return Preprocess(size=size).load(path)


def normalise(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, exactly as the eval transform does."""
    x = batch_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _Outputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        feats = self.model.tail(self.model.stem(x))
        logits, emb, temb = self.model.heads(feats)
        return logits, emb, temb, feats


def model_outputs(model: nn.Module, paths: Sequence[Path | str], mean: Sequence[float],
                  std: Sequence[float], size: int, batch: int = 64,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """logits, embeddings, text embeddings and pooled trunk features of each photo (eval view)."""
    from rich.progress import Progress

    sess = ort_session(_Outputs(model), torch.zeros(1, 3, size, size), n_outputs=4)
    chunks: dict[str, list[np.ndarray]] = {"logits": [], "embedding": [], "text_embedding": [],
                                           "features": []}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("inference", total=len(paths))
        for i in range(0, len(paths), batch):
            part = paths[i:i + batch]
            x = normalise(np.stack([load_uint8(p, size) for p in part]), mean, std)
            lo, em, te, fe = sess.run(None, {"x": x})
            chunks["logits"].append(lo)
            chunks["embedding"].append(em)
            chunks["text_embedding"].append(te)
            chunks["features"].append(fe)
            bar.advance(task, len(part))
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in chunks.items()}


class _TailOutputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor):
        feats = self.model.tail(h)
        logits, emb, temb = self.model.heads(feats)
        return logits, emb, temb, feats


def model_outputs_from_cache(model: nn.Module, cache: StemCache, rows: Sequence[int],
                             batch: int = 256) -> dict[str, np.ndarray]:
    """Like ``model_outputs`` but from cached stem activations of each row's eval view.

    Valid only when ``model``'s stem is the one the cache was built with (the cache key checks
    it): cached-mode training never changes the stem.
    """
    views = cache.views_of()
    first = np.array([views[int(r)][cache.view[views[int(r)]] == 0][0] for r in rows], np.int64)
    sess = ort_session(_TailOutputs(model), torch.zeros(1, *cache.acts.shape[1:]), n_outputs=4)
    chunks: dict[str, list[np.ndarray]] = {"logits": [], "embedding": [], "text_embedding": [],
                                           "features": []}
    for i in range(0, len(first), batch):
        x = cache.acts[first[i:i + batch]].astype(np.float32)
        for k, v in zip(chunks, sess.run(None, {"x": x}), strict=True):
            chunks[k].append(v)
    return {k: np.concatenate(v) for k, v in chunks.items()}


class _HeadOutputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor):
        logits, emb, temb = self.model.heads(feats)
        return logits, emb, temb, feats


def cached_view_outputs(model: nn.Module, cache_file: Path, batch: int = 256
                        ) -> dict[str, np.ndarray]:
    """Logits, embedding and pooled features of every view in a stem cache (the stem is frozen
    in cached training, so the cache's activations are exactly what the trunk sees; a
    heads-only cache holds the pooled features themselves)."""
    z = np.load(cache_file)
    acts, photo, view = z["acts"], z["photo"], z["view"]
    wrap = _HeadOutputs(model) if acts.ndim == 2 else _TailOutputs(model)
    sess = ort_session(wrap, torch.zeros(1, *acts.shape[1:]), n_outputs=4)
    lo, emb, feat = [], [], []
    for i in range(0, len(acts), batch):
        lg, em, _, fe = sess.run(None, {"x": acts[i:i + batch].astype(np.float32)})
        lo.append(lg)
        emb.append(em)
        feat.append(fe)
    return {"logits": np.concatenate(lo), "emb": np.concatenate(emb),
            "feat": np.concatenate(feat), "photo": photo, "view": view}


def load_stem_cache_if_valid(stem: nn.Module, paths: Sequence[Path | str],
                             train_mask: np.ndarray, n_aug: int, size: int, seed: int,
                             cache_file: Path) -> StemCache | None:
    """The cache at ``cache_file`` if its key matches this stem and these photos, else None."""
    key = _cache_key(stem, paths, train_mask, n_aug, size, seed)
    meta = Path(cache_file).with_suffix(".json")
    if (Path(cache_file).exists() and meta.exists()
            and json.loads(meta.read_text()).get("key") == key):
        z = np.load(cache_file)
        return StemCache(z["acts"], z["photo"], z["view"])
    return None


# --------------------------------------------------------------------------- stem cache


@dataclass
class StemCache:
    """Cached stem activations: ``acts[i]`` is view ``view[i]`` of photo row ``photo[i]``."""

    acts: np.ndarray  # float16 [V, C, H, W]
    photo: np.ndarray  # int32 [V] row in the photo table
    view: np.ndarray  # int8 [V]; 0 = the eval view (no augmentation)

    def views_of(self) -> dict[int, np.ndarray]:
        order = np.argsort(self.photo, kind="stable")
        rows, starts = np.unique(self.photo[order], return_index=True)
        return {int(r): v for r, v in zip(rows, np.split(order, starts[1:]), strict=False)}


def _augmented_views(arr: np.ndarray, size: int, n_aug: int, rng: np.random.Generator
                     ) -> list[np.ndarray]:
    """The eval view (the contract's pixels), its mirror, then random resized crops with
    flips and colour jitter of it."""
    from torchvision import transforms as T

    base = Image.fromarray(arr)
    views = [np.asarray(base)]
    if n_aug >= 1:
        views.append(np.asarray(base.transpose(Image.FLIP_LEFT_RIGHT)))
    aug = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                     T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3, 0.03)])
    for _ in range(max(0, n_aug - 1)):
        torch.manual_seed(int(rng.integers(2**31)))
        views.append(np.asarray(aug(base)))
    return views


def build_stem_cache(stem: nn.Module, paths: Sequence[Path | str], train_mask: np.ndarray,
                     mean: Sequence[float], std: Sequence[float], size: int, n_aug: int,
                     cache_file: Path | None = None, seed: int = 0, batch: int = 32,
                     progress: bool = True) -> StemCache:
    """Run the frozen stem once over every photo (train photos also over ``n_aug`` views).

    ``cache_file`` (an .npz) is reused when its key (stem weights, photos, views) matches, so
    retraining or resuming skips the expensive part.
    """
    key = _cache_key(stem, paths, train_mask, n_aug, size, seed)
    if cache_file is not None and Path(cache_file).exists():
        meta_path = Path(cache_file).with_suffix(".json")
        if meta_path.exists() and json.loads(meta_path.read_text()).get("key") == key:
            z = np.load(cache_file)
            return StemCache(z["acts"], z["photo"], z["view"])
    from rich.progress import Progress

    rng = np.random.default_rng(seed)
    sess = ort_session(stem, torch.zeros(1, 3, size, size))
    acts, photo, view = [], [], []
    pending: list[tuple[np.ndarray, int, int]] = []

    def flush() -> None:
        if not pending:
            return
        x = normalise(np.stack([p[0] for p in pending]), mean, std)
        acts.append(sess.run(None, {"x": x})[0].astype(np.float16))
        photo.extend(p[1] for p in pending)
        view.extend(p[2] for p in pending)
        pending.clear()

    with Progress(disable=not progress) as bar:
        task = bar.add_task("caching stem activations", total=len(paths))
        for row, p in enumerate(paths):
            vs = _augmented_views(load_uint8(p, size), size, n_aug if train_mask[row] else 0,
                                  rng)
            for v_id, v in enumerate(vs):
                pending.append((v, row, v_id))
            if len(pending) >= batch:
                flush()
            bar.advance(task)
        flush()
    cache = StemCache(np.concatenate(acts), np.asarray(photo, np.int32), np.asarray(view, np.int8))
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_file) + ".tmp.npz")
        np.savez(tmp, acts=cache.acts, photo=cache.photo, view=cache.view)
        os.replace(tmp, cache_file)
        Path(cache_file).with_suffix(".json").write_text(json.dumps({"key": key}))
    return cache


def _cache_key(stem: nn.Module, paths: Sequence, train_mask: np.ndarray, n_aug: int, size: int,
               seed: int) -> str:
    h = hashlib.sha256()
    for k, v in sorted(stem.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes()[:4096])
    h.update("\n".join(map(str, paths)).encode())
    h.update(np.asarray(train_mask, np.uint8).tobytes())
    h.update(f"{n_aug}/{size}/{seed}".encode())
    return h.hexdigest()


def batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
