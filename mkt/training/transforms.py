"""Image transforms for training and evaluation.

The eval transform is the contract with the runtime: letterbox (pad to square on black,
centred) then bilinear resize, then normalise. ``mkt.runtime.images`` re-implements it without
torch, and a test holds the two to a tight bound.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


class Letterbox:
    """Pad a PIL image to a centred square on black, then resize to ``size`` (bilinear)."""

    def __init__(self, size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.size = size
        self.fill = fill

    def __call__(self, im: Image.Image) -> Image.Image:
        im = im.convert("RGB")
        w, h = im.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), self.fill)
            canvas.paste(im, ((side - w) // 2, (side - h) // 2))
            im = canvas
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.BILINEAR)
        return im

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    from torchvision import transforms as T

    return T.Compose([Letterbox(size), T.ToTensor(), T.Normalize(mean, std)])


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """Augmentation for full fine-tuning: random resized crop, flip, colour jitter."""
    from torchvision import transforms as T

    return T.Compose(
        [
            Letterbox(size),
            T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2, 0.02),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
