"""Train the retrieval head of a checkpoint: ``python -m mkt.training.retrieval``.

Why a second, short stage: the model's embedding head is trained with a supervised
contrastive loss on *categories*, so it folds one category's photos together and finds a
listing's other photo no better than frozen ImageNet features. The fine-tuned pooled trunk
features keep more instance detail (measured on val). This stage keeps the whole network
fixed and fits one linear layer (:class:`mkt.training.models.RetrievalHead`) on
``[embedding, w * normalise(pooled features)]`` with a symmetric InfoNCE loss whose positives
are two photos (or augmented views) of the same *listing*, starting from PCA. It runs on the
training run's stem cache (every augmented view), takes a few minutes on a CPU, and picks its
step on the validation split's same-listing recall@1. The output is a normal checkpoint with
``retrieval_dim`` set, so export, evaluation and the runtime need nothing new.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mkt.training import metrics as M
from mkt.training.checkpoint import load_checkpoint, model_from_checkpoint, write_checkpoint
from mkt.training.features import cached_view_outputs
from mkt.training.models import RetrievalHead


def _norm(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-9)


def train_head(x: np.ndarray, listing: np.ndarray, label: np.ndarray, train: np.ndarray,
               val: np.ndarray, catalogue: np.ndarray, out_dim: int, *, steps: int = 600,
               batch: int = 1024, lr: float = 1e-4, eval_every: int = 50, seed: int = 0,
               log: Any = print) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fit ``Linear(x.shape[1], out_dim)`` on same-listing pairs of ``x[train]``; returns the
    state of the step with the best val score and the per-step history.

    The score is the mean of same-listing recall@1 and @10 (val photos among themselves,
    query excluded) and category precision@10 against the ``catalogue`` rows: instance
    training alone raises recall@1 while category precision falls (measured), and both are
    what ``similar`` users see. ``train``/``val``/``catalogue``: boolean row masks.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pca = PCA(out_dim, random_state=seed).fit(x[train])
    lin = torch.nn.Linear(x.shape[1], out_dim)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(pca.components_.astype(np.float32)))
        lin.bias.copy_(torch.from_numpy(-(pca.components_ @ pca.mean_).astype(np.float32)))
    log_t = torch.nn.Parameter(torch.tensor(float(np.log(20.0))))
    opt = torch.optim.AdamW([*lin.parameters(), log_t], lr=lr, weight_decay=1e-4)
    xt = torch.from_numpy(x[train].astype(np.float32))
    _, inv = np.unique(listing[train], return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1, len(inv)]
    groups = [order[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    xv = torch.from_numpy(x[val].astype(np.float32))
    xc = torch.from_numpy(x[catalogue].astype(np.float32))
    lv, yv, yc = listing[val], label[val], label[catalogue]

    def score() -> dict[str, float]:
        with torch.no_grad():
            q = F.normalize(lin(xv), dim=1).numpy()
            db = F.normalize(lin(xc), dim=1).numpy()
        r = M.same_listing_recall(q, lv, ks=(1, 10))
        p10 = M.category_precision_at_k(q, yv, db, yc, 10)
        return {"val_recall@1": r[1], "val_recall@10": r[10], "val_precision@10": p10,
                "val_score": (r[1] + r[10] + p10) / 3}

    s0 = score()
    best = (s0["val_score"], 0, {k: v.clone() for k, v in lin.state_dict().items()}, s0)
    history = [{"step": 0, **s0}]
    log(f"retrieval head: PCA init {s0}")
    target = torch.arange(min(batch, len(groups)))
    for step in range(1, steps + 1):
        pick = rng.choice(len(groups), len(target), replace=False)
        i1 = np.array([rng.choice(groups[g]) for g in pick])
        i2 = np.array([rng.choice(groups[g]) for g in pick])
        z1 = F.normalize(lin(xt[i1]), dim=1)
        z2 = F.normalize(lin(xt[i2]), dim=1)
        logits = z1 @ z2.T * log_t.exp().clamp(max=100.0)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            sc = score()
            history.append({"step": step, "loss": loss.item(), **sc})
            log(f"retrieval head: step {step} loss {loss.item():.3f} {sc}")
            if sc["val_score"] > best[0]:
                best = (sc["val_score"], step, {k: v.clone() for k, v in lin.state_dict().items()},
                        sc)
    return best[2], {"best_step": best[1], "best_val": best[3], "history": history}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mkt.training.retrieval",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="cleaned data dir (with split)")
    ap.add_argument("--cache", required=True, type=Path,
                    help="the training run's stem cache (.npz) for this checkpoint's split")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    ap.add_argument("--dim", type=int, default=None, help="output dim (default: embed_dim)")
    ap.add_argument("--feature-weight", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from mkt.training.train import TrainConfig, load_train_data

    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, ckpt = load_checkpoint(a.checkpoint)
    if ckpt.get("retrieval_dim"):
        print(f"{a.checkpoint}: already has a retrieval head", file=sys.stderr)
        return 2
    td = load_train_data(TrainConfig(data=str(a.data), out="", progress=False,
                                     tensorboard=False))
    views = cached_view_outputs(model, a.cache)
    if int(views["photo"].max()) >= len(td.paths):
        print(f"{a.cache}: does not match {a.data}'s photos", file=sys.stderr)
        return 2
    w = float(a.feature_weight)
    x = np.c_[views["emb"], w * _norm(views["feat"])].astype(np.float32)
    photo, view = views["photo"], views["view"]
    split = td.split[photo]
    train, val = split == "train", (split == "val") & (view == 0)
    dim = int(a.dim or ckpt["embed_dim"])
    if int(train.sum()) < dim:
        print(f"{a.cache}: {int(train.sum())} train views, fewer than the head's {dim} "
              "outputs (its PCA start needs at least as many); use more photos or --dim",
              file=sys.stderr)
        return 2
    state, info = train_head(x, td.listing[photo], td.label[photo], train, val,
                             train & (view == 0), dim, steps=a.steps, lr=a.lr, seed=a.seed)
    head = RetrievalHead(int(ckpt["embed_dim"]), x.shape[1] - int(ckpt["embed_dim"]), dim, w)
    head.proj.load_state_dict(state)
    model.retrieval = head
    out = {**ckpt, "retrieval_dim": dim, "state_dict": model.state_dict(),
           "retrieval": {"feature_weight": w, "steps": a.steps, "lr": a.lr, "seed": a.seed,
                         "cache": a.cache.name, "seconds": round(time.time() - t0, 1),
                         "command": " ".join(["python -m mkt.training.retrieval",
                                              *(argv if argv is not None else sys.argv[1:])]),
                         **info}}
    out.pop("optimizer", None)
    out.pop("scheduler", None)
    write_checkpoint(a.out, out)
    model_from_checkpoint(out)  # it must load back strictly
    print(json.dumps({k: v for k, v in out["retrieval"].items() if k != "history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
