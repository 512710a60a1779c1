"""``python -m mkt.training.ema_checkpoint EPOCH_CKPT OUT``: an epoch's averaged weights as a
checkpoint of their own.

Why: ``best.pt`` is the epoch with the best val *score* (accuracy and recall@1 together);
a distillation teacher is wanted for its accuracy, which may peak at another epoch. Every
``epoch-*.pt`` of an EMA run carries the averaged weights (``ema_state_dict``) beside the raw
ones; this writes them as an ordinary ``mkt-checkpoint/1`` (no optimiser state) that
evaluation, export and ``--teachers`` read like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkt.training.checkpoint import model_from_checkpoint, read_checkpoint, write_checkpoint


def ema_checkpoint(src: str | Path, dst: str | Path) -> dict:
    """Write ``src``'s EMA weights to ``dst``; returns the new checkpoint dict."""
    ckpt = read_checkpoint(src)
    ema = ckpt.get("ema_state_dict")
    if ema is None:
        raise ValueError(f"{src}: no EMA weights (trained without --ema?)")
    out = {k: v for k, v in ckpt.items()
           if k not in ("ema_state_dict", "ema_updates", "optimizer", "scheduler")}
    out["state_dict"] = ema
    out["derived_from"] = {"checkpoint": str(src), "weights": "ema_state_dict"}
    model_from_checkpoint(out)  # must load strictly
    write_checkpoint(dst, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    try:
        ckpt = ema_checkpoint(*args)
    except ValueError as e:
        print(f"mkt: error: {e}", file=sys.stderr)
        return 2
    hist = ckpt.get("metrics", {}).get("history", [])
    row = next((h for h in hist if h.get("epoch") == ckpt.get("epoch")), {})
    print(f"wrote {args[1]} (epoch {ckpt.get('epoch')}, val acc {row.get('val_acc')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
