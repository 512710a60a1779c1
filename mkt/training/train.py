"""Fine-tune a backbone into the two-headed mkt model (category logits + 256-d embedding).

Two modes share one loop, one loss and one checkpoint format:

- ``cached`` (the CPU default): the early blocks stay frozen at their ImageNet weights; their
  activations are computed once per photo and augmented view (``features.build_stem_cache``)
  and only the last blocks + heads train. This is what makes a real fine-tune fit in well under
  an hour on two CPU cores.
- ``full`` (the GPU default): every layer trains from decoded photos with torchvision
  augmentation, AMP, channels_last and pinned DataLoader workers.

Each batch holds pairs of photos of the same listing (two photos, or two augmented views of a
listing's only photo), so the embedding learns with a supervised contrastive loss in which the
other photo of the same listing is the positive, while the classifier learns the 13 categories.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mkt.runtime.preprocess import Preprocess
from mkt.training.checkpoint import CHECKPOINT_FORMAT, write_checkpoint
from mkt.training.checkpoint import load_checkpoint as _load_checkpoint
from mkt.training.clean import load_labels
from mkt.training.features import StemCache, build_stem_cache
from mkt.training.metrics import ece_of_logits, fit_temperature
from mkt.training.models import MktNet, build_model, get_arch
from mkt.training.split import load_split
from mkt.training.transforms import eval_transform, train_transform


@dataclass
class TrainConfig:
    """Every knob of a run; saved in each checkpoint so a run can be repeated or resumed."""

    data: str
    out: str
    arch: str = "efficientnet_lite0"
    split: int | None = None  # first tuned block (cache point); None: the arch's default
    weights: str | None = "imagenet"  # "imagenet", a state-dict file, or None (random init)
    mode: str = "auto"  # auto | cached | full
    images: str | None = None  # photo folder; default <src>/images of the cleaned data
    epochs: int = 10
    batch_listings: int = 48  # listings a batch; each gives two views
    lr: float = 2e-3
    tail_lr_mult: float = 0.3
    stem_lr_mult: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    freeze_epochs: int = 1  # epochs with only the heads training, then unfreeze
    label_smoothing: float = 0.1
    temperature: float = 0.1
    metric_weight: float = 1.0
    embed_dim: int = 256
    text_dim: int = 384
    text_weight: float = 0.0  # LiT-style loss to frozen MiniLM title embeddings (0: off)
    text_temperature: float = 0.05
    freeze_tail_blocks: int = 0  # first tail blocks kept frozen (a later split on one cache)
    heads_only: bool = False  # cached mode: whole trunk frozen, cache pooled features, train heads
    embed_init: str = "random"  # heads-only: "pca" starts the embedding MLP as a PCA projection
    pca_whiten: float = 0.5  # embed_init=pca: divide component i by singular_value_i ** this
    ema: float = 0.0  # EMA decay of the weights a step (0: off); val and best.pt use the EMA
    drop_path: float = 0.0  # stochastic depth of the tuned EfficientNet-Lite blocks (0: off)
    teachers: str | None = None  # comma-separated checkpoints to distil from (mkt.training.distil)
    kd_weight: float = 0.0  # share of the classification loss that matches the teachers
    kd_temperature: float = 2.0
    mixup: float = 0.0  # cached mode: probability a batch mixes stem activations (0: off)
    mixup_alpha: float = 0.4
    calibrate: bool = True  # fit a temperature on val logits of best.pt
    n_aug: int = 3  # cached mode: augmented views a train photo (mirror + random crops)
    seed: int = 0
    patience: int = 3
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    # stop after this epoch (0-based) of an `epochs`-long schedule, the LR schedule unchanged:
    # a teacher used at an earlier epoch need not train past it
    stop_after_epoch: int | None = None
    limit_photos: int | None = None
    threads: int | None = None
    workers: int | None = None  # image path's decoding processes (None: 4 on a GPU, 1 on a CPU)
    cache_dir: str | None = None
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["mkt", *sys.argv[1:]]))


# --------------------------------------------------------------------------- data


@dataclass
class TrainData:
    paths: list[str]
    label: np.ndarray  # int64 category index a photo row
    listing: np.ndarray  # int64 listing index a photo row
    split: np.ndarray  # str
    photo_ids: list[str]
    product_ids: list[str]
    labels: list[str]
    split_info: dict


def load_train_data(cfg: TrainConfig) -> TrainData:
    data = Path(cfg.data)
    photos = load_split(data).sort_values("photo_id").reset_index(drop=True)
    if cfg.limit_photos:
        # keep whole listings, in the same split proportions, for smoke runs and tests
        frac = min(1.0, cfg.limit_photos / max(1, len(photos)))
        keep: list[str] = []
        for _, grp in photos.groupby("split"):
            pids = sorted(grp["product_id"].unique())
            keep += pids[: max(2, round(len(pids) * frac))]
        photos = photos[photos["product_id"].isin(keep)].reset_index(drop=True)
    labels = load_labels(data)
    if cfg.images:
        img_dir = Path(cfg.images)
    else:
        img_dir = Path(json.loads((data / "source.json").read_text())["src"]) / "images"
    listing_codes = {pid: i for i, pid in enumerate(sorted(photos["product_id"].unique()))}
    return TrainData(
        paths=[str(img_dir / f"{p}.jpg") for p in photos["photo_id"]],
        label=photos["category"].map({c: i for i, c in enumerate(labels)}).to_numpy(np.int64),
        listing=photos["product_id"].map(listing_codes).to_numpy(np.int64),
        split=photos["split"].to_numpy(),
        photo_ids=photos["photo_id"].tolist(),
        product_ids=photos["product_id"].tolist(),
        labels=labels,
        split_info=json.loads((data / "split.json").read_text()),
    )


def listing_pair_batches(rows: np.ndarray, listing: np.ndarray, batch_listings: int,
                         rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (photo rows, listing ids) with two entries a listing: both its photos, or one twice."""
    by_listing: dict[int, list[int]] = {}
    for r in rows:
        by_listing.setdefault(int(listing[r]), []).append(int(r))
    keys = np.array(sorted(by_listing))
    order = rng.permutation(len(keys))
    for i in range(0, len(order), batch_listings):
        chunk = keys[order[i:i + batch_listings]]
        if len(chunk) < 2:
            continue
        a, b = [], []
        for k in chunk:
            members = by_listing[int(k)]
            if len(members) >= 2:
                x, y = rng.choice(members, 2, replace=False)
            else:
                x = y = members[0]
            a.append(x)
            b.append(y)
        yield np.asarray(a + b), np.concatenate([chunk, chunk])


# --------------------------------------------------------------------------- feeders


class CachedFeeder:
    """Feeds cached stem activations; the model runs only its tail and heads."""

    def __init__(self, cache: StemCache, device: torch.device, heads_only: bool = False) -> None:
        self.cache = cache
        self.views = cache.views_of()
        self.device = device
        self.heads_only = heads_only  # cache holds pooled trunk features: run only the heads

    def forward(self, model: MktNet, x: torch.Tensor):
        return model.heads(x) if self.heads_only else model.forward_from_stem(x)

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x.contiguous()

    def epoch(self, batches: list[np.ndarray], rng: np.random.Generator
              ) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray | None]]:
        """(inputs, photo rows, cache view indices) of each batch of the epoch, in order."""
        for rows in batches:
            x, picks = self.train_inputs(rows, rng)
            yield x, rows, picks

    def train_inputs(self, rows: np.ndarray, rng: np.random.Generator
                     ) -> tuple[torch.Tensor, np.ndarray]:
        half = len(rows) // 2
        picks = []
        for i, r in enumerate(rows):
            vs = self.views[int(r)]
            if i >= half and rows[i - half] == r and len(vs) > 1:
                # same photo on both sides of the pair: take a different view than the first
                prev = picks[i - half]
                choices = vs[vs != prev]
                picks.append(int(rng.choice(choices)))
            else:
                picks.append(int(rng.choice(vs)))
        picked = np.asarray(picks)
        x = torch.from_numpy(self.cache.acts[picked].astype(np.float32))
        return self._fmt(x), picked

    def eval_batches(self, rows: np.ndarray, batch: int = 256) -> Iterator[torch.Tensor]:
        first = np.array([self.views[int(r)][self.cache.view[self.views[int(r)]] == 0][0]
                          for r in rows], dtype=np.int64)
        for i in range(0, len(first), batch):
            x = torch.from_numpy(self.cache.acts[first[i:i + batch]].astype(np.float32))
            yield self._fmt(x)


class _PhotoDataset(torch.utils.data.Dataset):
    """Photo row -> (transformed tensor, row, worker pid). The pid lets a run report how many
    decoding processes it used (one pool for the whole run, not one a batch)."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        import os

        return self.transform(self.paths[i]), i, os.getpid()


class _SetBatches(torch.utils.data.Sampler):
    """A batch sampler whose batches the training loop sets before each pass.

    Why: the pair batches (two photos a listing) are drawn per epoch by
    :func:`listing_pair_batches`; a DataLoader iterates its batch sampler in the main process at
    every ``iter()``, so swapping the list keeps the same DataLoader, and its persistent worker
    processes, for the whole run.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageFeeder:
    """Feeds decoded, augmented photos through the whole network (GPU path, or CPU on demand).

    One DataLoader for training and one for evaluation, each built once with persistent
    workers: decoding and augmentation run in ``workers`` processes for the whole run while
    the model trains on the previous batch.
    """

    def __init__(self, paths: list[str], arch: str, device: torch.device, workers: int) -> None:
        spec = get_arch(arch)
        pre = Preprocess(size=spec.input_size, mean=spec.mean, std=spec.std)
        self.device, self.workers = device, workers
        self.cuda = device.type == "cuda"
        self._train_batches, self._eval_batches = _SetBatches(), _SetBatches()
        self.train_loader = self._loader(_PhotoDataset(paths, train_transform(pre)),
                                         self._train_batches)
        self.eval_loader = self._loader(_PhotoDataset(paths, eval_transform(pre)),
                                        self._eval_batches)
        self.worker_pids: set[int] = set()

    def _loader(self, ds: _PhotoDataset, batches: _SetBatches) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            ds, batch_sampler=batches, num_workers=self.workers, pin_memory=self.cuda,
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None)

    def forward(self, model: MktNet, x: torch.Tensor):
        return model(x)

    def _run(self, loader, batches: _SetBatches, rows_list: list[np.ndarray]
             ) -> Iterator[tuple[torch.Tensor, np.ndarray, None]]:
        batches.batches = [list(map(int, r)) for r in rows_list]
        for x, rows, pids in loader:
            self.worker_pids.update(int(p) for p in pids)
            x = x.to(self.device, non_blocking=True)
            yield x.contiguous(memory_format=torch.channels_last), rows.numpy(), None

    def epoch(self, batches: list[np.ndarray], rng: np.random.Generator
              ) -> Iterator[tuple[torch.Tensor, np.ndarray, None]]:
        """(augmented inputs, photo rows) of each batch; augmentation's randomness is torch's
        (seeded per worker by the DataLoader)."""
        return self._run(self.train_loader, self._train_batches, batches)

    def eval_batches(self, rows: np.ndarray, batch: int = 64) -> Iterator[torch.Tensor]:
        chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
        for x, _, _ in self._run(self.eval_loader, self._eval_batches, chunks):
            yield x


# --------------------------------------------------------------------------- loss and metrics


def supcon_loss(emb: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss: other photos of the same listing are the positives."""
    sim = emb @ emb.T / temperature
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    sim = sim.masked_fill(eye, -1e4)
    pos = (groups[:, None] == groups[None, :]) & ~eye
    logprob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_anchor = -(logprob * pos).sum(1) / pos.sum(1).clamp_min(1)
    has_pos = pos.any(1)
    return per_anchor[has_pos].mean() if has_pos.any() else emb.sum() * 0.0


def recall_at_1(emb: np.ndarray, listing: np.ndarray) -> float:
    """Photos whose listing has another photo in the set query the rest; hit = same listing."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    counts = np.bincount(listing, minlength=listing.max() + 1)
    queries = counts[listing] > 1
    if not queries.any():
        return float("nan")
    top = sim[queries].argmax(1)
    return float((listing[top] == listing[queries]).mean())


@torch.no_grad()
def predict(model: MktNet, feeder, rows: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, embedding, text_embedding) of each row's eval view."""
    model.eval()
    logits, embs, tembs = [], [], []
    for x in feeder.eval_batches(rows):
        lo, em, te = feeder.forward(model, x)
        logits.append(lo.float().cpu().numpy())
        embs.append(em.float().cpu().numpy())
        tembs.append(te.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(embs), np.concatenate(tembs)


def text_loss(temb: torch.Tensor, groups: torch.Tensor, text: torch.Tensor,
              temperature: float, soft: torch.Tensor | None = None) -> torch.Tensor:
    """LiT-style contrastive loss between photo text embeddings and frozen title embeddings.

    ``temb`` [N, D] photo side, ``groups`` [N] listing ids, ``text`` [N, D] each row's title
    embedding. Listing-level positives: photo -> the batch's unique titles (cross-entropy), and
    title -> the photos of its listing (multi-positive). ``soft`` [N, U] optional soft targets
    over the unique listings (mixup).
    """
    uniq, inv = torch.unique(groups, return_inverse=True)
    first = torch.zeros(len(uniq), dtype=torch.long, device=groups.device)
    first.scatter_(0, inv, torch.arange(len(groups), device=groups.device))
    t = text[first]  # [U, D]
    logits = temb @ t.T / temperature  # [N, U]
    target = soft if soft is not None else F.one_hot(inv, len(uniq)).float()
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    pos = target.T  # [U, N]
    t2i = -((pos * F.log_softmax(logits.T, dim=1)).sum(1) / pos.sum(1).clamp_min(1e-6)).mean()
    return 0.5 * (i2t + t2i)


def title_recall_at_k(temb: np.ndarray, listing: np.ndarray, text: np.ndarray,
                      k: int = 10) -> float:
    """Query = each listing's title embedding; hit = one of its photos in the top k photos."""
    uniq, first = np.unique(listing, return_index=True)
    q = text[first]
    sim = q @ temb.T
    k = min(k, temb.shape[0])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return float((listing[top] == uniq[:, None]).any(1).mean())


# --------------------------------------------------------------------------- calibration


def ece_score(logits: np.ndarray, y: np.ndarray, n_bins: int = 15,
              temperature: float = 1.0) -> float:
    """Expected calibration error of the top-1 confidence (:mod:`mkt.training.metrics`)."""
    return ece_of_logits(logits, y, temperature, n_bins)


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        msd = model.state_dict()
        for k, v in self.module.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point and not torch.equal(v, src):
                v.mul_(d).add_(src, alpha=1 - d)
            else:
                # frozen weights stay bit-identical (d*v + (1-d)*v is not v in floating point),
                # so the frozen stem still matches its activation cache
                v.copy_(src)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: MktNet, cfg: TrainConfig, data: TrainData, epoch: int,
                    metrics: dict, best_metric: float, optimizer=None, scheduler=None,
                    extra: dict | None = None) -> None:
    """Atomically write a checkpoint that ``torch.load(weights_only=True)`` can read."""
    spec = get_arch(cfg.arch)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "arch": cfg.arch,
        "num_classes": len(data.labels),
        "labels": list(data.labels),
        "embed_dim": cfg.embed_dim,
        "text_dim": cfg.text_dim,
        "split": cfg.split if cfg.split is not None else spec.split,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "preprocess": Preprocess(size=spec.input_size, mean=spec.mean, std=spec.std).to_dict(),
        "pretrained": model.pretrained,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": asdict(cfg),
        "metrics": metrics,
        "data": {"clean_dir": str(Path(cfg.data).resolve()),
                 "split_sha256": data.split_info.get("sha256", ""),
                 "split_seed": int(data.split_info.get("seed", 0)),
                 "split": data.split_info},
        "command": cfg.command,
        "epoch": epoch,
        "best_metric": best_metric,
    }
    if extra:
        ckpt.update(extra)
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    write_checkpoint(path, ckpt)


def load_checkpoint(path: Path | str) -> tuple[MktNet, dict]:
    """``(model, checkpoint)``: :func:`mkt.training.checkpoint.load_checkpoint`."""
    return _load_checkpoint(path)


def latest_epoch_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("epoch-*.pt"))
    return found[-1] if found else None


# --------------------------------------------------------------------------- the loop


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model: MktNet, cfg: TrainConfig, mode: str) -> list[dict]:
    heads = [*model.classifier.parameters(), *model.embedder.parameters(),
             *model.text_head.parameters()]
    groups = [{"params": heads, "lr": cfg.lr, "name": "heads"},
              {"params": list(model.tail.parameters()), "lr": cfg.lr * cfg.tail_lr_mult,
               "name": "tail"}]
    if mode == "full":
        groups.append({"params": list(model.stem.parameters()),
                       "lr": cfg.lr * cfg.stem_lr_mult, "name": "stem"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def _frozen_tail_blocks(model: MktNet, n: int) -> list[nn.Module]:
    blocks = getattr(model.tail, "blocks", None)
    if n <= 0 or blocks is None:
        return []
    return list(blocks[:n])


def _set_trainable(model: MktNet, mode: str, tail: bool, freeze_tail_blocks: int = 0) -> None:
    for p in model.stem.parameters():
        p.requires_grad = mode == "full" and tail
    for p in model.tail.parameters():
        p.requires_grad = tail
    for b in _frozen_tail_blocks(model, freeze_tail_blocks):
        for p in b.parameters():
            p.requires_grad = False


def _calibrate_best(path: Path, feeder, data: TrainData, val_rows: np.ndarray,
                    metrics: dict) -> dict:
    """Fit a softmax temperature on the val logits of ``best.pt`` and store it there."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model, _ = load_checkpoint(path)
    model.to(feeder.device).to(memory_format=torch.channels_last)
    vlog, _, _ = predict(model, feeder, val_rows)
    y = data.label[val_rows]
    t = fit_temperature(vlog, y)
    cal = {"temperature": t, "ece_val_before": ece_score(vlog, y),
           "ece_val_after": ece_score(vlog, y, temperature=t), "bins": 15,
           "fitted_on": f"val logits of best.pt ({len(val_rows)} photos), NLL, LBFGS"}
    print(f"calibration: {json.dumps(cal)}", flush=True)
    metrics = {**metrics, "temperature": t, "calibration": cal}
    ckpt["metrics"] = {**ckpt["metrics"], "temperature": t, "calibration": cal}
    ckpt["calibration"] = cal
    write_checkpoint(path, ckpt)
    return metrics


@torch.no_grad()
def init_embedder_pca(model: MktNet, feats: np.ndarray, whiten: float = 0.5) -> None:
    """Start the embedding MLP as the (partly whitened) PCA projection of ``feats``.

    The MLP is Linear(F, 2k) -> ReLU -> Linear(2k, k) with 2k = its hidden width; with rows
    [P; -P] and [I, -I], ReLU(z) - ReLU(-z) = z makes it exactly z = P (x - mean), so training
    starts from the frozen features' retrieval quality instead of a random projection.
    """
    lin1, lin2 = model.embedder[0], model.embedder[2]
    k = lin2.out_features
    if lin1.out_features != 2 * k:
        raise ValueError("embed_init=pca needs a hidden width of twice embed_dim")
    x = feats.astype(np.float64)
    mu = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mu, full_matrices=False)
    proj = vt[:k] / (sv[:k, None] ** whiten)
    z = (x - mu) @ proj.T
    proj = proj / np.median(np.linalg.norm(z, axis=1))  # pre-normalisation norm ~ 1
    w = torch.from_numpy(proj).float()
    b = -(w @ torch.from_numpy(mu).float())
    lin1.weight.copy_(torch.cat([w, -w]))
    lin1.bias.copy_(torch.cat([b, -b]))
    eye = torch.eye(k)
    lin2.weight.copy_(torch.cat([eye, -eye], dim=1))
    lin2.bias.zero_()


def stem_cache_name(cfg: TrainConfig) -> str:
    spec = get_arch(cfg.arch)
    if cfg.heads_only:
        return f"pooled-{cfg.arch}-aug{cfg.n_aug}.npz"
    split = cfg.split if cfg.split is not None else spec.split
    suffix = f"-s{split}" if split is not None else ""
    return f"stem-{cfg.arch}{suffix}-aug{cfg.n_aug}.npz"


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the final metrics. Writes epoch-*.pt, best.pt, metrics.json."""
    _set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = cfg.mode if cfg.mode != "auto" else ("full" if device.type == "cuda" else "cached")
    if mode == "cached" and cfg.arch == "small_cnn":
        mode = "full"  # nothing to gain from caching a 4-layer net
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_train_data(cfg)
    spec = get_arch(cfg.arch)
    model = build_model(cfg.arch, len(data.labels), cfg.embed_dim, pretrained=cfg.weights,
                        split=cfg.split, text_dim=cfg.text_dim)
    if cfg.drop_path:
        if not hasattr(model.tail, "drop_path"):
            raise ValueError(f"--drop-path: {cfg.arch} has no stochastic depth here")
        model.tail.drop_path = float(cfg.drop_path)
    print(f"arch {cfg.arch} ({model.pretrained}), mode {mode}, device {device}, "
          f"{len(data.paths)} photos", flush=True)

    train_rows = np.flatnonzero(data.split == "train")
    val_rows = np.flatnonzero(data.split == "val")
    t0 = time.time()
    if mode == "cached":
        cache_file = Path(cfg.cache_dir or out) / stem_cache_name(cfg)
        frozen = nn.Sequential(model.stem, model.tail) if cfg.heads_only else model.stem
        cache = build_stem_cache(frozen, data.paths, data.split == "train", spec.mean,
                                 spec.std, spec.input_size, cfg.n_aug, cache_file, cfg.seed,
                                 progress=cfg.progress)
        feeder: CachedFeeder | ImageFeeder = CachedFeeder(cache, device, cfg.heads_only)
        if cfg.embed_init == "pca":
            if not cfg.heads_only:
                raise ValueError("embed_init=pca needs heads_only (cached pooled features)")
            tr_views = np.flatnonzero(np.isin(cache.photo, train_rows))
            init_embedder_pca(model, cache.acts[tr_views].astype(np.float32), cfg.pca_whiten)
            print(f"embedder initialised from PCA of {len(tr_views)} train views", flush=True)
    else:
        workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 1)
        feeder = ImageFeeder(data.paths, cfg.arch, device, workers)
    cache_seconds = time.time() - t0
    teacher_view_logits: np.ndarray | None = None
    online_teachers = None
    if cfg.kd_weight > 0:
        if not cfg.teachers:
            raise ValueError("--kd-weight needs --teachers CKPT[,CKPT...]")
        if cfg.mixup > 0:
            raise ValueError("--kd-weight with --mixup: the teachers saw the unmixed views")
        from mkt.training import distil

        teachers = [t for t in cfg.teachers.split(",") if t]
        t_kd = time.time()
        if isinstance(feeder, CachedFeeder):
            teacher_view_logits = distil.cached_teacher_logits(
                teachers, feeder.cache, Path(cfg.cache_dir or out))
            tv = feeder.cache.view == 0
            tacc = (teacher_view_logits[tv].argmax(1)
                    == data.label[feeder.cache.photo[tv]])
            vmask = data.split[feeder.cache.photo[tv]] == "val"
            print(f"teachers: val acc {tacc[vmask].mean():.4f} (eval views), "
                  f"{time.time() - t_kd:.0f}s", flush=True)
        else:
            online_teachers = distil.OnlineTeachers(teachers, device)
    text_by_listing: torch.Tensor | None = None
    text_np: np.ndarray | None = None
    if cfg.text_weight > 0 or len(val_rows):
        from mkt.training.text import title_embeddings

        t_text = time.time()
        pids = sorted(set(data.product_ids))  # listing code i <-> pids[i]
        text_np = title_embeddings(cfg.data, pids,
                                   Path(cfg.cache_dir or out) / "titles-minilm.npy")
        if text_np.shape[1] != cfg.text_dim:
            raise ValueError(f"text_dim {cfg.text_dim} != title embeddings {text_np.shape[1]}")
        text_by_listing = torch.from_numpy(text_np).to(device)
        print(f"title embeddings {text_np.shape} in {time.time() - t_text:.1f}s", flush=True)
    # channels_last speeds up the depthwise convolutions on CPU (~1.7x here) as well as on GPU
    model.to(device).to(memory_format=torch.channels_last)

    steps_per_epoch = max(1, math.ceil(len(np.unique(data.listing[train_rows]))
                                       / cfg.batch_listings))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch)) if not cfg.max_steps else 0
    optimizer = torch.optim.AdamW(_param_groups(model, cfg, mode), weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    start_epoch, best, history, stale = 0, -1.0, [], 0
    if cfg.resume and (last := latest_epoch_checkpoint(out)) is not None:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"], strict=True)
        if ema is not None and "ema_state_dict" in ckpt:
            ema.module.load_state_dict(ckpt["ema_state_dict"], strict=True)
            ema.updates = int(ckpt.get("ema_updates", 0))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt["best_metric"]
        history = ckpt["metrics"].get("history", [])
        print(f"resumed from {last} (epoch {ckpt['epoch']})", flush=True)

    writer = None
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except ImportError:
            print("tensorboard not installed: no TensorBoard logs", flush=True)
    use_amp = device.type == "cuda"
    rng = np.random.default_rng(cfg.seed + start_epoch)
    step = start_epoch * steps_per_epoch
    first_loss = last_loss = None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        tune_tail = (epoch >= cfg.freeze_epochs or cfg.max_steps is not None) and not (
            cfg.heads_only and mode == "cached")
        _set_trainable(model, mode, tune_tail, cfg.freeze_tail_blocks)
        model.train()
        if not tune_tail:
            model.tail.eval()  # frozen BatchNorm statistics too
        for b in _frozen_tail_blocks(model, cfg.freeze_tail_blocks):
            b.eval()
        t_epoch = time.time()
        sums = {"loss": 0.0, "ce": 0.0, "metric": 0.0, "text": 0.0, "kd": 0.0, "correct": 0,
                "n": 0}
        with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                      TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
                      TimeRemainingColumn(), disable=not cfg.progress) as bar:
            task = bar.add_task("train", total=steps_per_epoch, epoch=epoch, loss=0.0, acc=0.0)
            batches = [rows for rows, _ in listing_pair_batches(train_rows, data.listing,
                                                                cfg.batch_listings, rng)]
            for x, rows, picks in feeder.epoch(batches, rng):
                y = torch.from_numpy(data.label[rows]).to(device)
                g = torch.from_numpy(data.listing[rows]).to(device)
                perm, lam = None, 1.0
                if cfg.mixup > 0 and mode == "cached" and rng.random() < cfg.mixup:
                    # mix both views of listing i with both views of listing perm(i), one lambda,
                    # so the pair structure (and the supcon positives) survives the mix
                    half = len(rows) // 2
                    p = rng.permutation(half)
                    perm = torch.from_numpy(np.concatenate([p, p + half])).to(device)
                    lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                    lam = max(lam, 1 - lam)
                    x = lam * x + (1 - lam) * x[perm]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits, emb, temb = feeder.forward(model, x)
                ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                kd = torch.zeros(())
                if teacher_view_logits is not None or online_teachers is not None:
                    from mkt.training.distil import kd_loss

                    t_logits = (torch.from_numpy(teacher_view_logits[picks]).to(device)
                                if teacher_view_logits is not None else online_teachers(x))
                    kd = kd_loss(logits.float(), t_logits, cfg.kd_temperature)
                if perm is not None:
                    ce = lam * ce + (1 - lam) * F.cross_entropy(
                        logits.float(), y[perm], label_smoothing=cfg.label_smoothing)
                ml = supcon_loss(emb.float(), g, cfg.temperature)
                loss = (1 - cfg.kd_weight) * ce + cfg.kd_weight * kd + cfg.metric_weight * ml
                tl = torch.zeros(())
                if cfg.text_weight > 0 and text_by_listing is not None:
                    soft = None
                    if perm is not None:
                        _, inv = torch.unique(g, return_inverse=True)
                        u = int(inv.max()) + 1
                        soft = lam * F.one_hot(inv, u).float() + (1 - lam) * F.one_hot(
                            inv[perm], u).float()
                    tl = text_loss(temb.float(), g, text_by_listing[g], cfg.text_temperature,
                                   soft)
                    loss = loss + cfg.text_weight * tl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                last_loss = loss.item()
                first_loss = last_loss if first_loss is None else first_loss
                sums["loss"] += last_loss * len(rows)
                sums["ce"] += ce.item() * len(rows)
                sums["metric"] += ml.item() * len(rows)
                sums["text"] += float(tl.item()) * len(rows)
                sums["kd"] += float(kd.item()) * len(rows)
                sums["correct"] += int((logits.argmax(1) == y).sum())
                sums["n"] += len(rows)
                bar.update(task, advance=1, loss=sums["loss"] / sums["n"],
                           acc=sums["correct"] / sums["n"])
                if writer is not None:
                    writer.add_scalar("train/loss", last_loss, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                if cfg.max_steps and step >= cfg.max_steps:
                    break
        n = max(1, sums["n"])
        row = {"epoch": epoch, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n,
               "train_metric_loss": sums["metric"] / n, "train_text_loss": sums["text"] / n,
               "train_kd_loss": sums["kd"] / n,
               "train_acc": sums["correct"] / n,
               "seconds": round(time.time() - t_epoch, 1), "tail_trained": tune_tail}
        eval_model = ema.module if ema is not None else model
        if len(val_rows):
            vlog, vemb, vtemb = predict(eval_model, feeder, val_rows)
            row["val_acc"] = float((vlog.argmax(1) == data.label[val_rows]).mean())
            row["val_recall@1"] = recall_at_1(vemb, data.listing[val_rows])
            row["val_ece"] = ece_score(vlog, data.label[val_rows])
            if ema is not None:  # the raw (non-averaged) weights too, to measure the EMA
                rlog, remb, _ = predict(model, feeder, val_rows)
                row["raw_val_acc"] = float((rlog.argmax(1) == data.label[val_rows]).mean())
                row["raw_val_recall@1"] = recall_at_1(remb, data.listing[val_rows])
            if text_np is not None:
                row["val_title_recall@10"] = title_recall_at_k(
                    vtemb, data.listing[val_rows], text_np[data.listing[val_rows]], 10)
            r1 = row["val_recall@1"] if not math.isnan(row["val_recall@1"]) else 0.0
            row["val_score"] = (row["val_acc"] + r1) / 2
        else:
            row["val_score"] = -row["train_loss"]
        history.append(row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    writer.add_scalar(f"epoch/{k}", v, epoch)
        print(json.dumps(row), flush=True)
        improved = row["val_score"] > best
        if improved:
            best, stale = row["val_score"], 0
        else:
            stale += 1
        metrics = {"history": history, "best_val_score": best, "mode": mode,
                   "device": str(device), "cache_seconds": round(cache_seconds, 1),
                   "first_loss": first_loss, "last_loss": last_loss}
        ema_extra = ({"ema_state_dict": {k: v.detach().cpu()
                                         for k, v in ema.module.state_dict().items()},
                      "ema_updates": ema.updates} if ema is not None else None)
        save_checkpoint(out / f"epoch-{epoch:03d}.pt", model, cfg, data, epoch, metrics, best,
                        optimizer, scheduler, extra=ema_extra)
        if improved:
            save_checkpoint(out / "best.pt", eval_model, cfg, data, epoch, metrics, best)
        if cfg.max_steps and step >= cfg.max_steps:
            break
        if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch:
            print(f"stop after epoch {epoch} (of a {cfg.epochs}-epoch schedule)", flush=True)
            break
        if stale >= cfg.patience:
            print(f"early stop: no val improvement in {cfg.patience} epochs", flush=True)
            break
    metrics["train_seconds"] = round(time.time() - t0 - cache_seconds, 1)
    if isinstance(feeder, ImageFeeder):
        metrics["loader_processes"] = len(feeder.worker_pids)  # 2 x workers when built once
        metrics["steps"] = step
    if cfg.calibrate and len(val_rows) and (out / "best.pt").exists():
        metrics = _calibrate_best(out / "best.pt", feeder, data, val_rows, metrics)
    metrics["total_seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if writer is not None:
        writer.close()
    return metrics
