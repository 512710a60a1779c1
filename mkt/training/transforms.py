"""Torch transforms on top of the one preprocessing contract (:mod:`mkt.runtime.preprocess`).

Every photo a model is trained, evaluated or calibrated on is decoded by
:meth:`Preprocess.load` (EXIF orientation, any mode to RGB, JPEG draft, letterbox), exactly as
the runtime decodes a user's photo. Augmentation then works on that array; normalisation is
:meth:`Preprocess.normalise`'s arithmetic, as the exported graph does it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from mkt.runtime.preprocess import Preprocess


def _to_tensor(arr: np.ndarray, pre: Preprocess):
    import torch

    return torch.from_numpy(pre.normalise(arr[None])[0])


class _Eval:
    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre

    def __call__(self, path: str | os.PathLike):
        return _to_tensor(self.pre.load(path), self.pre)


class _Train:
    def __init__(self, pre: Preprocess, aug) -> None:
        self.pre, self.aug = pre, aug

    def __call__(self, path: str | os.PathLike):
        arr = np.asarray(self.aug(Image.fromarray(self.pre.load(path))), dtype=np.uint8)
        return _to_tensor(arr, self.pre)


def eval_transform(pre: Preprocess) -> Callable[[str | os.PathLike], object]:
    """Photo path -> normalised ``float32 [3, S, S]`` tensor, no augmentation. (Transforms
    are picklable objects, so DataLoader workers can be spawned as well as forked.)"""
    return _Eval(pre)


def train_transform(pre: Preprocess) -> Callable[[str | os.PathLike], object]:
    """Photo path -> augmented tensor: random resized crop, flip, colour jitter on the
    contract's letterboxed pixels, then the contract's normalisation."""
    from torchvision import transforms as T

    aug = T.Compose([
        T.RandomResizedCrop(pre.size, scale=(0.6, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2, 0.02),
    ])

    return _Train(pre, aug)
