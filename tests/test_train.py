"""Tiny trainings on CPU: the loss falls and a checkpoint reloads to identical outputs."""

import pytest

torch = pytest.importorskip("torch")

from mkt.training.train import (  # noqa: E402
    TrainConfig,
    latest_epoch_checkpoint,
    load_checkpoint,
    supcon_loss,
    train,
)
from tests.synthetic import make_split_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_split_dataset(tmp_path_factory.mktemp("train"), listings_per_cat=6)


def _cfg(data_dir, out, **kw):
    base = dict(epochs=3, batch_listings=64, n_aug=1, progress=False, tensorboard=False,
                threads=2)
    return TrainConfig(data=str(data_dir), out=str(out), **{**base, **kw})


def test_tiny_training_loss_falls(data_dir, tmp_path):
    """EfficientNet-Lite0 (real ImageNet weights) in the CPU cached mode, a few steps."""
    out = tmp_path / "lite0"
    metrics = train(_cfg(data_dir, out, arch="efficientnet_lite0", weights="imagenet",
                         mode="cached", max_steps=3, lr=3e-3))
    assert metrics["last_loss"] < metrics["first_loss"]
    ckpt_path = latest_epoch_checkpoint(out)
    assert ckpt_path is not None and (out / "best.pt").exists()
    # state dicts and plain config only: loads with weights_only=True
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert raw["arch"] == "efficientnet_lite0" and raw["config"]["max_steps"] == 3
    assert raw["preprocess"]["size"] == raw["input_size"] == 224


def test_resnet50_trains_end_to_end(data_dir, tmp_path):
    """ResNet-50 stays supported (random init here; --weights FILE for real ones): the full
    mode runs, writes a checkpoint, and that checkpoint rebuilds a working model."""
    out = tmp_path / "r50"
    train(_cfg(data_dir, out, arch="resnet50", weights=None, mode="full", max_steps=2,
               lr=1e-4))
    model, ckpt = load_checkpoint(out / "best.pt")
    with torch.no_grad():
        logits, emb, text = model(torch.randn(2, 3, ckpt["input_size"], ckpt["input_size"]))
    assert logits.shape == (2, len(ckpt["labels"])) and text.shape == (2, ckpt["text_dim"])
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_image_path_keeps_one_loader_for_the_run(data_dir, tmp_path):
    """The full (GPU) mode decodes in one pool of worker processes for the whole run: two
    loaders (train, eval) of 2 workers each, however many batches and epochs (a DataLoader
    built a batch would start fresh workers every step)."""
    metrics = train(_cfg(data_dir, tmp_path / "dl", arch="small_cnn", weights=None,
                         mode="full", epochs=2, batch_listings=4, workers=2, freeze_epochs=0))
    assert metrics["steps"] >= 6
    assert 1 <= metrics["loader_processes"] <= 4


def test_checkpoint_reloads_the_model_that_was_saved(tmp_path):
    """The reloaded model computes exactly what the model did before it was saved (not just
    what a second load of the same file does)."""
    from mkt.training.checkpoint import write_checkpoint
    from mkt.training.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 13, 32, pretrained=None).eval()
    with torch.no_grad():  # not the init a rebuild would give: the loaded weights must win
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ckpt = {"arch": "efficientnet_lite0", "num_classes": 13, "labels": [str(i) for i in range(13)],
            "embed_dim": 32, "text_dim": 384, "input_size": 224, "mean": [0.5] * 3,
            "std": [0.5] * 3, "state_dict": model.state_dict()}
    write_checkpoint(tmp_path / "c.pt", ckpt)
    again, _ = load_checkpoint(tmp_path / "c.pt")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(model(x), again(x), strict=True):
            assert torch.equal(a, b)


def test_resume_continues_from_last_epoch(data_dir, tmp_path):
    base = dict(data=str(data_dir), out=str(tmp_path / "r"), arch="small_cnn", weights=None,
                mode="full", batch_listings=8, progress=False, tensorboard=False, patience=9)
    train(TrainConfig(**base, epochs=1))
    metrics = train(TrainConfig(**base, epochs=2, resume=True))
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]


def test_stop_after_epoch_keeps_the_schedule(data_dir, tmp_path):
    """Stopping a 4-epoch run after epoch 1 gives the same epoch-1 weights and learning rate as
    the full run (a teacher used at an early epoch need not train on), and nothing after it."""
    base = dict(arch="small_cnn", weights=None, mode="full", batch_listings=8, epochs=4,
                patience=9, threads=1)
    train(_cfg(data_dir, tmp_path / "full", **base))
    train(_cfg(data_dir, tmp_path / "cut", stop_after_epoch=1, **base))
    assert not (tmp_path / "cut" / "epoch-002.pt").exists()
    full, cut = (torch.load(tmp_path / r / "epoch-001.pt", map_location="cpu", weights_only=True)
                 for r in ("full", "cut"))
    assert cut["scheduler"]["_last_lr"] == full["scheduler"]["_last_lr"]
    for k, v in full["state_dict"].items():
        assert torch.allclose(cut["state_dict"][k].float(), v.float(), atol=1e-6), k


def test_supcon_prefers_matching_pairs():
    groups = torch.tensor([0, 1, 2, 0, 1, 2])
    good = torch.nn.functional.normalize(torch.eye(3).repeat(2, 1), dim=1)
    bad = torch.nn.functional.normalize(torch.eye(3)[[0, 1, 2, 1, 2, 0]], dim=1)
    assert supcon_loss(good, groups, 0.1) < supcon_loss(bad, groups, 0.1)


def test_drop_path_only_while_training():
    """Stochastic depth skips tuned blocks at random in training and never in eval (so the
    exported model is the same network)."""
    from mkt.training.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 13, 32, pretrained=None, split=11)
    h = torch.randn(4, 112, 14, 14)
    model.eval()
    with torch.no_grad():
        ref = model.tail(h)
        model.tail.drop_path = 0.5
        assert torch.equal(model.tail(h), ref)
        model.tail.train()
        a, b = model.tail(h), model.tail(h)
    assert not torch.allclose(a, b)


def test_ema_checkpoint_holds_the_averaged_weights(data_dir, tmp_path):
    """An epoch checkpoint's EMA weights become a checkpoint of their own (a teacher from the
    epoch with the best accuracy): the averaged weights, not the raw ones, and it loads."""
    from mkt.training.ema_checkpoint import ema_checkpoint, main

    out = tmp_path / "ema"
    train(_cfg(data_dir, out, arch="efficientnet_lite0", mode="cached", heads_only=True,
               epochs=2, ema=0.9, lr=5e-3))
    raw = torch.load(out / "epoch-001.pt", map_location="cpu", weights_only=True)
    ema_checkpoint(out / "epoch-001.pt", tmp_path / "t.pt")
    model, ckpt = load_checkpoint(tmp_path / "t.pt")
    w = model.state_dict()["classifier.weight"]
    assert torch.equal(w, raw["ema_state_dict"]["classifier.weight"])
    assert not torch.equal(w, raw["state_dict"]["classifier.weight"])
    assert "optimizer" not in ckpt
    train(_cfg(data_dir, tmp_path / "noema", arch="small_cnn", weights=None, mode="full",
               epochs=1, batch_listings=8))
    assert main([str(tmp_path / "noema" / "epoch-000.pt"), str(tmp_path / "x.pt")]) == 2


def test_train_help_names_every_registered_arch():
    """`mkt train --help` lists the backbones by hand (the CLI must not import torch for
    help); every registered arch must be in it."""
    from typer.testing import CliRunner

    from mkt.cli import app
    from mkt.training.models import REGISTRY

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output
    missing = [name for name in REGISTRY if name not in out]
    assert not missing, missing
