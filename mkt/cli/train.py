"""`mkt data ...`, `mkt train ...` and `mkt evaluate`: the commands that need the train extra.

Only typer is imported at module level, so registering these commands in ``mkt.cli`` costs the
runtime commands nothing; torch, pandas and scikit-learn load inside the command bodies. They
are always listed; without the extra each fails with exit 2 and the line that says what to
install.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .dbopts import CredentialsOpt, ImagesTableOpt, PhotosDirOpt, ProductsTableOpt
from .errors import fail as _fail
from .errors import require_extra
from .options import command, new_app

data_app = new_app(help="Clean, pad-resize and split the marketplace data (train extra).")
train_app = new_app(help="Fine-tune a backbone (`mkt train --data D --out O`) or run the "
                         "seed baselines (`mkt train baselines`). Needs the train extra.",
                    invoke_without_command=True, no_args_is_help=False)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    command(app, "evaluate")(evaluate_command)


def _need_train_extra(what: str = "train") -> None:
    require_extra("train", what, "torch", "pandas")


def _command_line(prefix: str) -> str:
    """The command as a user would type it, whether run as `mkt ...` or `python -m`."""
    words = prefix.split()
    args = sys.argv[1:]
    if args[: len(words) - 1] == words[1:]:
        args = args[len(words) - 1:]
    return " ".join([prefix, *args])


@command(data_app, "clean")
def data_clean(
    src: str = typer.Option(..., help="Folder with Products.csv, Images.csv and images/, or "
                            "a database URL (tables products, images; needs --photos)."),
    out: Path = typer.Option(..., help="Output folder for the cleaned data."),
    check_photos: bool = typer.Option(True, help="Decode-check every photo (slower)."),
    products_table: ProductsTableOpt = "products",
    images_table: ImagesTableOpt = "images",
    photos: PhotosDirOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Clean listings into a typed table; report every dropped row by reason."""
    _need_train_extra("data clean")
    from mkt.runtime.dburl import is_db_url
    from mkt.training.clean import clean

    db = {}
    if is_db_url(src):
        db = {"products_table": products_table, "images_table": images_table,
              "photos": photos, "credentials": credentials}
    else:
        for name in ("Products.csv", "Images.csv"):
            if not (Path(src) / name).is_file():
                _fail(f"{src}: no {name} (expected the marketplace dataset folder)")
    report = clean(src, out, check_photos=check_photos, **db).to_dict()
    report.pop("bad_photos", None)
    typer.echo(json.dumps(report, indent=2))
    typer.echo(f"wrote {out}/listings.parquet, photos.parquet, labels.json, clean_report.json")


@command(data_app, "photos")
def data_photos(
    src: Path = typer.Option(..., help="Folder of photos."),
    out: Path = typer.Option(..., help="Folder for the letterboxed copies."),
    size: int = typer.Option(224, help="Side of the square output."),
    workers: int | None = typer.Option(None, help="Processes (default: all cores)."),
) -> None:
    """Letterbox photos to squares (idempotent, parallel; bad files reported and skipped)."""
    _need_train_extra("data photos")
    from mkt.training.photos import prepare_photos

    if not src.is_dir():
        _fail(f"{src}: not a folder")
    rep = prepare_photos(src, out, size=size, workers=workers)
    for path, why in rep.failed:
        typer.echo(f"mkt: skipped {path}: {why}", err=True)
    typer.echo(f"done {rep.done}, already done {rep.skipped}, failed {len(rep.failed)}")
    if rep.failed:
        raise typer.Exit(1)


@command(data_app, "split")
def data_split(
    data: Path = typer.Option(..., help="Cleaned data folder (from `mkt data clean`)."),
    seed: int = typer.Option(0, help="Random seed of the split."),
    val: float = typer.Option(0.10, help="Share of listings for validation."),
    test: float = typer.Option(0.15, help="Share of listings for the test split."),
) -> None:
    """Split by listing, stratified by category, reused photos kept on one side."""
    _need_train_extra("data split")
    from mkt.training.split import write_split

    if not (data / "listings.parquet").is_file():
        _fail(f"{data}: no listings.parquet; run `mkt data clean` first")
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        _fail("--val and --test must be fractions with val + test < 1")
    typer.echo(json.dumps(write_split(data, seed=seed, val=val, test=test), indent=2))


@train_app.callback()
def train_main(
    ctx: typer.Context,
    data: Path | None = typer.Option(None, help="Cleaned + split data folder."),
    out: Path | None = typer.Option(None, help="Run folder for checkpoints and logs."),
    arch: str = typer.Option("efficientnet_lite0",
                             help="Backbone: efficientnet_lite0, efficientnet_lite1 (240 px), "
                             "efficientnet_lite2 (260 px), resnet50 or small_cnn."),
    weights: str = typer.Option(
        "imagenet", help="Start weights: imagenet, none, or the path of a state dict."),
    mode: str = typer.Option(
        "auto", help="Training mode: auto (full on a GPU, cached on a CPU), cached or full."),
    images: Path | None = typer.Option(None, help="Photo folder (default: the data's source)."),
    epochs: int = typer.Option(10, help="Most epochs (early stopping may end sooner)."),
    batch_listings: int = typer.Option(48, help="Listings a batch (two photos each)."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (AdamW, warm-up + cosine)."),
    freeze_epochs: int = typer.Option(1, help="Epochs training only the heads."),
    n_aug: int = typer.Option(3, help="Cached mode: augmented views a train photo."),
    seed: int = typer.Option(0, help="Random seed."),
    patience: int = typer.Option(3, help="Early stop after this many epochs without gain."),
    max_steps: int | None = typer.Option(None, help="Stop after N steps (smoke runs)."),
    limit_photos: int | None = typer.Option(None, help="Use about N photos (smoke runs)."),
    threads: int | None = typer.Option(None, help="CPU threads (default: torch's choice)."),
    cache_dir: Path | None = typer.Option(None, help="Where cached stem activations live."),
    resume: bool = typer.Option(False, help="Resume from the last epoch checkpoint in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    split: int | None = typer.Option(
        None, help="EfficientNet-Lite: first trained block; earlier blocks are frozen and, on a "
                   "CPU, cached (default: the arch's own)."),
    text_weight: float = typer.Option(
        0.0, help="Weight of the title-alignment loss that trains the cross-modal head "
                  "(photo near its listing's title in MiniLM space); 0: off."),
    ema: float = typer.Option(0.0, help="EMA decay of the weights a step (0: off)."),
) -> None:
    """Fine-tune a backbone into the classifier + embedding (+ cross-modal) model."""
    if ctx.invoked_subcommand is not None:
        return
    _need_train_extra("train")
    if data is None or out is None:
        _fail("mkt train needs --data and --out (see `mkt train --help`)")
    from mkt.training.models import REGISTRY
    from mkt.training.train import TrainConfig, train

    if arch not in REGISTRY:
        _fail(f"unknown arch {arch!r}; choose from {', '.join(sorted(REGISTRY))}")
    if not (data / "split.csv").is_file():
        _fail(f"{data}: no split.csv; run `mkt data clean` then `mkt data split` first")
    w: str | None = None if weights.lower() in ("none", "random") else weights
    if w not in (None, "imagenet") and not Path(w).is_file():
        _fail(f"--weights {w}: no such file")
    cfg = TrainConfig(data=str(data), out=str(out), arch=arch, weights=w, mode=mode,
                      images=str(images) if images else None, epochs=epochs,
                      batch_listings=batch_listings, lr=lr, freeze_epochs=freeze_epochs,
                      n_aug=n_aug, seed=seed, patience=patience, max_steps=max_steps,
                      limit_photos=limit_photos, threads=threads,
                      cache_dir=str(cache_dir) if cache_dir else None, resume=resume,
                      progress=progress, split=split, text_weight=text_weight, ema=ema,
                      command=_command_line("mkt train"))
    try:
        metrics = train(cfg)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    best = max(metrics.get("history", [{}]), key=lambda r: r.get("val_score", -1), default={})
    typer.echo(f"best epoch: {json.dumps(best)}")
    typer.echo(f"checkpoints in {out} (best.pt)")


@command(train_app, "baselines")
def train_baselines(
    data: Path = typer.Option(..., help="Cleaned + split data folder."),
    out: Path = typer.Option(Path("runs/baselines"), help="Where report.json/report.md go."),
    cnn_epochs: int = typer.Option(15, help="Epochs for the small CNN."),
    limit: int | None = typer.Option(None, help="Use about N photos (smoke runs)."),
) -> None:
    """Reproduce the seed projects' baselines on the listing-level split."""
    _need_train_extra("train baselines")
    from mkt.training.baselines import run_baselines

    if not (data / "split.csv").is_file():
        _fail(f"{data}: no split.csv; run `mkt data split` first")
    report = run_baselines(data, out, cnn_epochs=cnn_epochs, limit=limit)
    typer.echo((out / "report.md").read_text() if (out / "report.md").exists()
               else json.dumps(report, indent=2))


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint from `mkt train`."),
    data: Path | None = typer.Option(None, help="Cleaned data (default: the checkpoint's)."),
    out: Path | None = typer.Option(None, help="Report folder (default: beside checkpoint)."),
    baseline: bool = typer.Option(True, help="Also evaluate frozen ImageNet features."),
) -> None:
    """Evaluate a checkpoint on the test split, beside the frozen-ImageNet baseline."""
    _need_train_extra("evaluate")
    from mkt.training.evaluate import evaluate

    if not checkpoint.is_file():
        _fail(f"{checkpoint}: no such checkpoint")
    out = out or checkpoint.parent / "eval"
    report = evaluate(checkpoint, data=data, out=out, baseline=baseline)
    md = out / "report.md"
    typer.echo(md.read_text() if md.exists() else json.dumps(report, indent=2))
