"""Knowledge distillation: the student also learns the averaged soft predictions of teachers.

Why: the shipped model must stay small and fast (EfficientNet-Lite0), but a bigger or
differently trained model, or several averaged, classify better. Matching their softened
class probabilities on the same views (Hinton et al.; "a good teacher is patient and
consistent", Beyer et al.) moves the student towards them at no run-time cost.

Teachers are ordinary checkpoints (``mkt-checkpoint/1``). In the cached (CPU) mode each
teacher's logits are computed once for every cached view from the teacher's own stem cache,
which must hold the same photos and views in the same order (same data, seed and ``n_aug``:
then a view is exactly the same crop for an EfficientNet-Lite0 teacher, and the same crop
drawn at the teacher's input size for a larger one). In the full (GPU) mode the teachers run
on each batch as it is trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mkt.runtime.hashcache import sha256_file
from mkt.training.checkpoint import load_checkpoint
from mkt.training.features import StemCache, cached_view_outputs


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (so its
    gradient scale does not depend on T)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _teacher_cache_file(ckpt: dict, cache_dir: Path) -> Path:
    from mkt.training.train import TrainConfig, stem_cache_name

    c = ckpt.get("config", {})
    cfg = TrainConfig(data="", out="", arch=ckpt["arch"], split=ckpt.get("split"),
                      n_aug=int(c.get("n_aug", 3)), heads_only=bool(c.get("heads_only", False)))
    return Path(cache_dir) / stem_cache_name(cfg)


def cached_teacher_logits(teachers: Sequence[str | Path], cache: StemCache, cache_dir: Path,
                          log=print) -> np.ndarray:
    """Mean teacher logits ``float32 [V, C]`` for every view of the student's ``cache``.

    Each teacher's stem cache (found in ``cache_dir`` by its checkpoint's arch, split and
    n_aug) must list the same (photo, view) pairs as the student's, or this raises. The result
    is kept in ``cache_dir`` (``teacher-logits-<key>.npz``), reused by every student of the
    same teachers and views: computing it runs each teacher over every view.
    """
    key = json.dumps({"teachers": [sha256_file(t) for t in teachers],
                      "views": hashlib.sha256(cache.photo.tobytes() + cache.view.tobytes())
                      .hexdigest()})
    store = Path(cache_dir) / f"teacher-logits-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if store.exists():
        z = np.load(store)
        if str(z["key"]) == key:
            return z["logits"]
    total: np.ndarray | None = None
    for t in teachers:
        model, ckpt = load_checkpoint(t)
        f = _teacher_cache_file(ckpt, cache_dir)
        if not f.exists():
            raise ValueError(f"teacher {t}: its stem cache {f} is missing (train it with "
                             f"--cache-dir {cache_dir} first)")
        out = cached_view_outputs(model, f)
        if not (np.array_equal(out["photo"], cache.photo)
                and np.array_equal(out["view"], cache.view)):
            raise ValueError(f"teacher {t}: {f.name} does not hold the student's views "
                             "(same data, seed and --n-aug needed)")
        log(f"teacher {t} ({ckpt['arch']}, split {ckpt.get('split')}): logits of "
            f"{len(out['logits'])} views from {f.name}")
        total = out["logits"] if total is None else total + out["logits"]
    assert total is not None
    logits = (total / len(teachers)).astype(np.float32)
    tmp = store.with_name(store.stem + ".tmp.npz")
    np.savez(tmp, logits=logits, key=np.array(key))
    tmp.replace(store)
    return logits


class OnlineTeachers:
    """Teachers run on each batch (the full mode): mean logits, inputs resized per teacher."""

    def __init__(self, teachers: Sequence[str | Path], device: torch.device) -> None:
        self.models = []
        for t in teachers:
            model, ckpt = load_checkpoint(t)
            model.to(device).eval()
            self.models.append((model, int(ckpt["input_size"])))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model, size in self.models:
            xi = x if x.shape[-1] == size else F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            lo = model(xi)[0].float()
            total = lo if total is None else total + lo
        assert total is not None
        return total / len(self.models)
