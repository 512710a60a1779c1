"""Distillation: the student learns what its teachers say, from the same cached views."""

import pytest

torch = pytest.importorskip("torch")

from mkt.training.checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from mkt.training.distil import kd_loss  # noqa: E402
from mkt.training.train import TrainConfig, train  # noqa: E402
from tests.synthetic import make_split_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_split_dataset(tmp_path_factory.mktemp("distil"), listings_per_cat=8)


def _cfg(data_dir, out, cache, **kw):
    base = dict(arch="efficientnet_lite0", mode="cached", heads_only=True, n_aug=1,
                epochs=40, patience=100, batch_listings=64, lr=5e-3, warmup_epochs=0,
                progress=False, tensorboard=False, threads=2, calibrate=False)
    return TrainConfig(data=str(data_dir), out=str(out), cache_dir=str(cache), **{**base, **kw})


def test_kd_loss_is_zero_only_on_agreement():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(t.flip(1), t, 2.0).item() > 0.1


def test_student_follows_a_permuted_teacher(data_dir, tmp_path):
    """A teacher whose classes are rotated (it says class c+1 where it means c) is followed by a
    student trained on its logits alone (kd_weight 1): the student agrees with the teacher and
    not with the labels. With kd off the same student follows the labels."""
    cache = tmp_path / "cache"
    train(_cfg(data_dir, tmp_path / "t", cache))
    ckpt = read_checkpoint(tmp_path / "t" / "best.pt")
    sd = ckpt["state_dict"]
    n = ckpt["num_classes"]
    perm = [(c - 1) % n for c in range(n)]  # new class c takes the old class c-1's row
    sd["classifier.weight"] = sd["classifier.weight"][perm].clone()
    sd["classifier.bias"] = sd["classifier.bias"][perm].clone()
    write_checkpoint(tmp_path / "teacher.pt", {**ckpt, "state_dict": sd})

    from mkt.training.features import cached_view_outputs
    from mkt.training.train import load_train_data, stem_cache_name

    def agreement(run):
        model_ckpt = tmp_path / run / "best.pt"
        from mkt.training.checkpoint import load_checkpoint

        cfg = _cfg(data_dir, tmp_path / run, cache)
        model, _ = load_checkpoint(model_ckpt)
        teacher, _ = load_checkpoint(tmp_path / "teacher.pt")
        f = cache / stem_cache_name(cfg)
        s = cached_view_outputs(model, f)
        t = cached_view_outputs(teacher, f)
        labels = load_train_data(cfg).label[s["photo"]]
        pred = s["logits"].argmax(1)
        return float((pred == t["logits"].argmax(1)).mean()), float((pred == labels).mean())

    train(_cfg(data_dir, tmp_path / "s", cache, teachers=str(tmp_path / "teacher.pt"),
               kd_weight=1.0, kd_temperature=1.0))
    with_teacher, with_labels = agreement("s")
    assert with_teacher >= with_labels + 0.4, (with_teacher, with_labels)

    train(_cfg(data_dir, tmp_path / "plain", cache))
    with_teacher, with_labels = agreement("plain")
    assert with_labels >= with_teacher + 0.4, (with_teacher, with_labels)


def test_teacher_cache_must_hold_the_same_views(data_dir, tmp_path):
    """A teacher trained on other views (another --n-aug) is refused, not silently misaligned."""
    cache = tmp_path / "cache"
    train(_cfg(data_dir, tmp_path / "t", cache, epochs=1, n_aug=2))
    with pytest.raises(ValueError, match="stem cache|views"):
        train(_cfg(data_dir, tmp_path / "s", cache, epochs=1, n_aug=1,
                   teachers=str(tmp_path / "t" / "best.pt"), kd_weight=0.5))
