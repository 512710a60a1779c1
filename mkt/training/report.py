"""Small helpers for the evaluation and baseline reports: markdown tables and matplotlib PNGs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def fmt(x: object, digits: int = 3) -> str:
    """A table cell: floats rounded, NaN/None as an en dash."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if math.isnan(float(x)) else f"{float(x):.{digits}f}"
    return str(x).replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c, digits) for c in r) + " |")
    return "\n".join(lines) + "\n"


def to_jsonable(obj: object) -> object:
    """numpy scalars/arrays and NaN -> plain JSON (NaN becomes null)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: object) -> None:
    Path(path).write_text(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows = true class) with every cell annotated."""
    from mkt.training.metrics import normalise_rows

    plt = _plt()
    norm = normalise_rows(np.asarray(cm))
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 1.0 + 0.65 * n), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i].sum() == 0:
                continue
            v = norm[i, j]
            ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center",
                    fontsize=7, color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_title(title or "confusion matrix (rows normalised)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_class(labels: Sequence[str], series: Mapping[str, Sequence[float]], path: Path,
                   title: str = "per-class accuracy", support: Sequence[int] | None = None
                   ) -> None:
    """Grouped horizontal bars, one group per class, one bar per named series."""
    plt = _plt()
    n, m = len(labels), max(1, len(series))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * n * max(1, m / 1.5)), dpi=110)
    h = 0.8 / m
    y = np.arange(n)
    for j, (name, vals) in enumerate(series.items()):
        v = np.nan_to_num(np.asarray(vals, np.float64), nan=0.0)
        ax.barh(y + (j - (m - 1) / 2) * h, v, height=h, label=name)
    names = [f"{lab} (n={support[i]})" if support is not None else lab
             for i, lab in enumerate(labels)]
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (recall of the class)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
