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
import os
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
from mkt.training.clean import load_labels
from mkt.training.features import StemCache, build_stem_cache
from mkt.training.models import MktNet, build_model, get_arch
from mkt.training.split import load_split
from mkt.training.transforms import eval_transform, train_transform

CHECKPOINT_FORMAT = "mkt-checkpoint/1"


@dataclass
class TrainConfig:
    """Every knob of a run; saved in each checkpoint so a run can be repeated or resumed."""

    data: str
    out: str
    arch: str = "efficientnet_lite0"
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
    n_aug: int = 3  # cached mode: augmented views a train photo (mirror + random crops)
    seed: int = 0
    patience: int = 3
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    limit_photos: int | None = None
    threads: int | None = None
    workers: int = 4
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

    def __init__(self, cache: StemCache, device: torch.device) -> None:
        self.cache = cache
        self.views = cache.views_of()
        self.device = device

    def forward(self, model: MktNet, x: torch.Tensor):
        return model.forward_from_stem(x)

    def train_inputs(self, rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
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
        x = torch.from_numpy(self.cache.acts[np.asarray(picks)].astype(np.float32))
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def eval_batches(self, rows: np.ndarray, batch: int = 256) -> Iterator[torch.Tensor]:
        first = np.array([self.views[int(r)][self.cache.view[self.views[int(r)]] == 0][0]
                          for r in rows], dtype=np.int64)
        for i in range(0, len(first), batch):
            x = torch.from_numpy(self.cache.acts[first[i:i + batch]].astype(np.float32))
            yield x.to(self.device).contiguous(memory_format=torch.channels_last)


class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.paths[i])


class ImageFeeder:
    """Feeds decoded, augmented photos through the whole network (GPU path, or CPU on demand)."""

    def __init__(self, paths: list[str], arch: str, device: torch.device, workers: int) -> None:
        spec = get_arch(arch)
        pre = Preprocess(size=spec.input_size, mean=spec.mean, std=spec.std)
        self.train_ds = _PhotoDataset(paths, train_transform(pre))
        self.eval_ds = _PhotoDataset(paths, eval_transform(pre))
        self.device, self.workers = device, workers
        self.cuda = device.type == "cuda"

    def forward(self, model: MktNet, x: torch.Tensor):
        return model(x)

    def _load(self, ds, rows) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=len(rows), sampler=list(map(int, rows)),
                                             num_workers=self.workers if self.cuda else 0,
                                             pin_memory=self.cuda)
        x = next(iter(loader))
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last)

    def train_inputs(self, rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self._load(self.train_ds, rows)

    def eval_batches(self, rows: np.ndarray, batch: int = 64) -> Iterator[torch.Tensor]:
        for i in range(0, len(rows), batch):
            yield self._load(self.eval_ds, rows[i:i + batch])


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
def predict(model: MktNet, feeder, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, embs = [], []
    for x in feeder.eval_batches(rows):
        lo, em = feeder.forward(model, x)
        logits.append(lo.float().cpu().numpy())
        embs.append(em.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(embs)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: MktNet, cfg: TrainConfig, data: TrainData, epoch: int,
                    metrics: dict, best_metric: float, optimizer=None, scheduler=None) -> None:
    """Atomically write a checkpoint that ``torch.load(weights_only=True)`` can read."""
    spec = get_arch(cfg.arch)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "arch": cfg.arch,
        "num_classes": len(data.labels),
        "labels": list(data.labels),
        "embed_dim": cfg.embed_dim,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
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
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


_REQUIRED = ("format", "arch", "num_classes", "labels", "embed_dim", "input_size", "mean", "std",
             "state_dict")


def read_checkpoint(path: Path | str) -> dict:
    """Read a checkpoint safely (``weights_only=True``: no pickled code) and check its keys."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
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


def model_from_checkpoint(ckpt: dict) -> MktNet:
    """Rebuild the network (random init, no download) and load the weights strictly; eval mode."""
    model = build_model(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt["embed_dim"]),
                        pretrained=None)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.pretrained = ckpt.get("pretrained", "unknown")
    return model.eval()


def load_checkpoint(path: Path | str) -> tuple[MktNet, dict]:
    """Rebuild the model from a checkpoint (state dicts + config only; no pickled code)."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt


def latest_epoch_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("epoch-*.pt"))
    return found[-1] if found else None


# --------------------------------------------------------------------------- the loop


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model: MktNet, cfg: TrainConfig, mode: str) -> list[dict]:
    heads = [*model.classifier.parameters(), *model.embedder.parameters()]
    groups = [{"params": heads, "lr": cfg.lr, "name": "heads"},
              {"params": list(model.tail.parameters()), "lr": cfg.lr * cfg.tail_lr_mult,
               "name": "tail"}]
    if mode == "full":
        groups.append({"params": list(model.stem.parameters()),
                       "lr": cfg.lr * cfg.stem_lr_mult, "name": "stem"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def _set_trainable(model: MktNet, mode: str, tail: bool) -> None:
    for p in model.stem.parameters():
        p.requires_grad = mode == "full" and tail
    for p in model.tail.parameters():
        p.requires_grad = tail


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
    model = build_model(cfg.arch, len(data.labels), cfg.embed_dim, pretrained=cfg.weights)
    print(f"arch {cfg.arch} ({model.pretrained}), mode {mode}, device {device}, "
          f"{len(data.paths)} photos", flush=True)

    train_rows = np.flatnonzero(data.split == "train")
    val_rows = np.flatnonzero(data.split == "val")
    t0 = time.time()
    if mode == "cached":
        cache_file = Path(cfg.cache_dir or out) / f"stem-{cfg.arch}.npz"
        cache = build_stem_cache(model.stem, data.paths, data.split == "train", spec.mean,
                                 spec.std, spec.input_size, cfg.n_aug, cache_file, cfg.seed,
                                 progress=cfg.progress)
        feeder: CachedFeeder | ImageFeeder = CachedFeeder(cache, device)
    else:
        feeder = ImageFeeder(data.paths, cfg.arch, device, cfg.workers)
    cache_seconds = time.time() - t0
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
    start_epoch, best, history, stale = 0, -1.0, [], 0
    if cfg.resume and (last := latest_epoch_checkpoint(out)) is not None:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"], strict=True)
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
        tune_tail = epoch >= cfg.freeze_epochs or cfg.max_steps is not None
        _set_trainable(model, mode, tune_tail)
        model.train()
        if not tune_tail:
            model.tail.eval()  # frozen BatchNorm statistics too
        t_epoch = time.time()
        sums = {"loss": 0.0, "ce": 0.0, "metric": 0.0, "correct": 0, "n": 0}
        with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                      TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
                      TimeRemainingColumn(), disable=not cfg.progress) as bar:
            task = bar.add_task("train", total=steps_per_epoch, epoch=epoch, loss=0.0, acc=0.0)
            for rows, groups in listing_pair_batches(train_rows, data.listing,
                                                     cfg.batch_listings, rng):
                x = feeder.train_inputs(rows, rng)
                y = torch.from_numpy(data.label[rows]).to(device)
                g = torch.from_numpy(groups).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits, emb = feeder.forward(model, x)
                ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                ml = supcon_loss(emb.float(), g, cfg.temperature)
                loss = ce + cfg.metric_weight * ml
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                scheduler.step()
                step += 1
                last_loss = loss.item()
                first_loss = last_loss if first_loss is None else first_loss
                sums["loss"] += last_loss * len(rows)
                sums["ce"] += ce.item() * len(rows)
                sums["metric"] += ml.item() * len(rows)
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
               "train_metric_loss": sums["metric"] / n, "train_acc": sums["correct"] / n,
               "seconds": round(time.time() - t_epoch, 1), "tail_trained": tune_tail}
        if len(val_rows):
            vlog, vemb = predict(model, feeder, val_rows)
            row["val_acc"] = float((vlog.argmax(1) == data.label[val_rows]).mean())
            row["val_recall@1"] = recall_at_1(vemb, data.listing[val_rows])
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
        save_checkpoint(out / f"epoch-{epoch:03d}.pt", model, cfg, data, epoch, metrics, best,
                        optimizer, scheduler)
        if improved:
            save_checkpoint(out / "best.pt", model, cfg, data, epoch, metrics, best)
        if cfg.max_steps and step >= cfg.max_steps:
            break
        if stale >= cfg.patience:
            print(f"early stop: no val improvement in {cfg.patience} epochs", flush=True)
            break
    metrics["total_seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if writer is not None:
        writer.close()
    return metrics
