"""The one checkpoint format (``mkt-checkpoint/1``): write, read, rebuild the model, its id.

A checkpoint is a plain dict of tensors and plain types, saved with ``torch.save`` and read
with ``torch.load(weights_only=True)`` (no pickled code can run):

    {"format", "arch", "num_classes", "labels", "embed_dim", "text_dim", ["retrieval_dim",]
     "input_size",
     "mean", "std", "preprocess", "pretrained", "state_dict", "config", "metrics",
     "calibration", "data", "command", "epoch", "best_metric" [, "optimizer", "scheduler"]}

Training writes it, evaluation and export read it; nothing else knows its layout.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mkt.runtime.fsutil import atomic_write_bytes, display_path
from mkt.runtime.preprocess import Preprocess

CHECKPOINT_FORMAT = "mkt-checkpoint/1"
_REQUIRED = ("format", "arch", "num_classes", "labels", "embed_dim", "input_size", "mean", "std",
             "state_dict")


def write_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Atomically save ``ckpt`` (which must have every required key) to ``path``."""
    missing = [k for k in _REQUIRED if k not in ckpt and k != "format"]
    if missing:
        raise ValueError(f"checkpoint dict lacks {', '.join(missing)}")
    ckpt = {**ckpt, "format": CHECKPOINT_FORMAT}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: no pickled code) and check its keys."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torch raises many types on a file that is not a checkpoint
        raise ValueError(f"{path}: not a readable mkt checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not an mkt checkpoint (not a dict)")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not an mkt checkpoint (missing {', '.join(missing)})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt['format']!r}, "
                         f"want {CHECKPOINT_FORMAT!r}")
    if len(ckpt["labels"]) != ckpt["num_classes"]:
        raise ValueError(f"{path}: {len(ckpt['labels'])} labels for "
                         f"{ckpt['num_classes']} classes")
    return ckpt


def preprocess_of(ckpt: Mapping[str, Any]) -> Preprocess:
    """The preprocessing contract the checkpoint's model was trained with."""
    if isinstance(ckpt.get("preprocess"), Mapping):
        return Preprocess.from_dict(ckpt["preprocess"])
    return Preprocess(size=int(ckpt["input_size"]), mean=tuple(ckpt["mean"]),
                      std=tuple(ckpt["std"]))


def data_for_report(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's ``data`` as committed reports and manifests show it. Training records the
    clean dir absolute (export and evaluation find it from any folder); a report says it
    relative to the checkout, never as this machine's path."""
    d = ckpt.get("data")
    if not d or not d.get("clean_dir"):
        return d
    return {**d, "clean_dir": display_path(d["clean_dir"])}


def model_from_checkpoint(ckpt: Mapping[str, Any]):
    """Rebuild the network (random init, no download) and load the weights strictly; eval mode."""
    from mkt.training.models import build_model

    model = build_model(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt["embed_dim"]),
                        pretrained=None, split=ckpt.get("split"),
                        text_dim=int(ckpt.get("text_dim", 384)),
                        retrieval_dim=ckpt.get("retrieval_dim"))
    state = ckpt["state_dict"]
    if "text_dim" not in ckpt:
        # a two-headed checkpoint from before the text head: the text head stays untrained
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("text_head.")},
                 **state}
    model.load_state_dict(state, strict=True)
    model.pretrained = ckpt.get("pretrained", "unknown")
    return model.eval()


def load_checkpoint(path: str | Path):
    """``(model, checkpoint dict)`` from a checkpoint file."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt


def model_id_from_state_dict(state_dict: Mapping[str, Any]) -> str:
    """First 16 hex of a sha256 over the weights, so equal weights give equal ids.

    Keys in sorted order; for each, the key (utf-8), dtype and shape as text, then the tensor's
    raw bytes (C-contiguous, CPU). Buffers (BatchNorm statistics) count: they change outputs.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "model_from_checkpoint",
           "model_id_from_state_dict", "preprocess_of", "read_checkpoint", "write_checkpoint"]
