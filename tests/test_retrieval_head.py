"""The retrieval head: a linear map trained on same-listing pairs that travels in the
checkpoint and changes the model's ``embedding`` output."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mkt.training.checkpoint import load_checkpoint, write_checkpoint  # noqa: E402
from mkt.training.models import RetrievalHead, build_model  # noqa: E402
from mkt.training.retrieval import train_head  # noqa: E402


def test_training_finds_listing_signal_that_pca_misses():
    """Listing identity lives in 8 low-variance dims; 56 loud dims are noise. PCA to 8 keeps
    the noise, so its recall is near chance; InfoNCE on same-listing pairs must find the
    signal (this test fails if the head does not learn)."""
    rng = np.random.default_rng(0)
    n_list, per = 300, 3
    centre = rng.normal(size=(n_list, 8)) * 1.0
    x = np.concatenate([np.repeat(centre, per, 0) + 0.15 * rng.normal(size=(n_list * per, 8)),
                        5.0 * rng.normal(size=(n_list * per, 56))], 1).astype(np.float32)
    listing = np.repeat(np.arange(n_list), per)
    label = listing % 5
    train = listing < 200
    val = ~train
    state, info = train_head(x, listing, label, train, val, train, 8, steps=300, batch=128,
                             lr=1e-2, eval_every=50, log=lambda *_: None)
    first = info["history"][0]["val_recall@1"]
    assert first < 0.2
    assert info["best_val"]["val_recall@1"] > first + 0.4
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (8, 64)


def test_checkpoint_with_retrieval_head_reloads_and_changes_embedding(tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 13, 32, pretrained=None, retrieval_dim=16).eval()
    with torch.no_grad():
        model.retrieval.feature_weight.fill_(3.0)
        for p in model.retrieval.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ckpt = {"arch": "efficientnet_lite0", "num_classes": 13, "labels": [str(i) for i in range(13)],
            "embed_dim": 32, "retrieval_dim": 16, "text_dim": 384, "input_size": 224,
            "mean": [0.5] * 3, "std": [0.5] * 3, "state_dict": model.state_dict()}
    write_checkpoint(tmp_path / "c.pt", ckpt)
    again, _ = load_checkpoint(tmp_path / "c.pt")
    assert isinstance(again.retrieval, RetrievalHead)
    assert float(again.retrieval.feature_weight) == 3.0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out, out2 = model(x), again(x)
        for a, b in zip(out, out2, strict=True):
            assert torch.equal(a, b)
        assert out[1].shape == (2, 16)
        assert torch.allclose(out[1].norm(dim=1), torch.ones(2), atol=1e-5)
        model.retrieval = None  # without the head, the embedding is the embedder's again
        assert model(x)[1].shape == (2, 32)
