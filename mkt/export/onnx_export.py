"""Checkpoint -> fp32 ONNX with the preprocessing inside the graph.

The exported graph takes what the runtime has after decoding and letterboxing a photo,
``image`` uint8 ``[N, S, S, 3]`` RGB, and returns ``logits [N, C]`` and ``embedding [N, D]``
(L2-normalised), see docs/design.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mkt.training.checkpoint import model_from_checkpoint, preprocess_of

OPSET = 17
INPUT_NAME = "image"
#: The graph's outputs, in the order the model returns them; a model without the cross-modal
#: head returns the first two.
OUTPUT_NAMES = ("logits", "embedding", "text_embedding")


class UInt8Model(nn.Module):
    """``MktNet`` behind the runtime's input contract: uint8 NHWC in, (logits, embedding) out.

    ``forward`` does cast to float, ``/255``, ``(x - mean) / std`` over the channel (last) axis,
    NHWC -> NCHW, then the model. Putting this in the graph means the runtime only decodes and
    letterboxes, and cannot get the normalisation of an arch wrong.

    Both outputs come from one graph and one trunk pass: the category head and the embedding
    head share the pooled trunk features, so classifying and embedding a photo costs one trunk
    evaluation, and the runtime can ask for either or both outputs of the same ``run``.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        x = x.permute(0, 3, 1, 2)
        return tuple(self.model(x))

    def output_names(self, input_size: int) -> tuple[str, ...]:
        """Names of the graph outputs this model gives (two or three)."""
        with torch.no_grad():
            n = len(self(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8)))
        return OUTPUT_NAMES[:n]


def wrap_checkpoint(ckpt: dict[str, Any]) -> UInt8Model:
    pre = preprocess_of(ckpt)
    return UInt8Model(model_from_checkpoint(ckpt), pre.mean, pre.std).eval()


def export_fp32(wrapped: UInt8Model, path: str | Path, input_size: int, opset: int = OPSET) -> None:
    """``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``) with a dynamic batch axis,
    then ``onnx.checker.check_model`` (full check, with shape inference)."""
    import onnx

    if opset < 17:
        raise ValueError("opset must be >= 17")
    dummy = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    batch = {0: "batch"}
    names = wrapped.output_names(input_size)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter's own deprecation notices; it is the one we want here
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(shape inference|Constant folding).*")
        torch.onnx.export(
            wrapped.eval(), (dummy,), str(path),
            input_names=[INPUT_NAME], output_names=list(names),
            dynamic_axes={INPUT_NAME: batch, **{n: batch for n in names}},
            opset_version=opset, do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL, dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    if inp.name != INPUT_NAME or inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise RuntimeError(f"{path}: exported input is not uint8 {INPUT_NAME!r}")
    outs = tuple(o.name for o in model.graph.output)
    if outs != names:
        raise RuntimeError(f"{path}: exported outputs {outs}, want {names}")


def torch_outputs(wrapped: UInt8Model, images: np.ndarray,
                  batch: int = 32) -> tuple[np.ndarray, ...]:
    """Run the wrapped torch model on uint8 NHWC images: each output as one numpy array."""
    parts: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            outs = wrapped(torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))
            if not parts:
                parts = [[] for _ in outs]
            for acc, o in zip(parts, outs, strict=True):
                acc.append(o.numpy())
    return tuple(np.concatenate(p) for p in parts)


__all__ = ["OPSET", "OUTPUT_NAMES", "UInt8Model", "export_fp32", "torch_outputs",
           "wrap_checkpoint"]
