"""Neighbour votes (``mkt classify --votes``): catalogue categories really move the answer."""

from __future__ import annotations

import numpy as np

from mkt.runtime.index import Index
from mkt.runtime.model import Model
from mkt.runtime.votes import NeighbourVotes
from tests.conftest import jlines, run


def _catalogue(tmp_path, model, photos, category):
    arr = model.load(photos)
    _, emb = model.predict(arr)
    return Index.create(tmp_path / "cat", model_id=model.model_id, dim=emb.shape[1],
                        ids=[p.stem for p in photos], vectors=emb,
                        meta=[{"category": category}] * len(photos)), arr, emb


def test_votes_pull_towards_the_catalogue(tmp_path, bundle_dir, fixture_photos):
    model = Model(bundle_dir)
    target = "Office Furniture & Equipment"
    idx, arr, emb = _catalogue(tmp_path, model, fixture_photos[:8], target)
    v = NeighbourVotes(idx, model.labels, k=5)
    dist = v.distribution(emb)
    col = model.labels.index(target)
    assert np.allclose(dist[:, col], 1.0)
    logits, _ = model.predict(arr)
    own = model.probabilities(logits)
    fused = v.fuse(own, dist)
    assert np.allclose(fused.sum(1), 1.0)
    assert (fused[:, col] > own[:, col]).all()
    # a catalogue whose categories are unknown casts no vote: answers unchanged
    blank = Index.create(tmp_path / "blank", model_id=model.model_id, dim=emb.shape[1],
                         ids=["a", "b"], vectors=emb[:2], meta=[{}, {}])
    v2 = NeighbourVotes(blank, model.labels)
    assert np.array_equal(v2.fuse(own, v2.distribution(emb)), own)


def test_cli_votes_use_the_index(tmp_path, bundle_dir, fixture_photos):
    model = Model(bundle_dir)
    target = "Office Furniture & Equipment"
    idx, _, _ = _catalogue(tmp_path, model, fixture_photos[:8], target)
    idx.close()
    photo = fixture_photos[0]
    plain = jlines(run("classify", photo, "--bundle", bundle_dir, "--json", "-k", "13").stdout)[0]
    voted = jlines(run("classify", photo, "--bundle", bundle_dir, "--json", "-k", "13", "--votes",
                       "--index", tmp_path / "cat").stdout)[0]
    s = {d["category"]: d["score"] for d in plain["top"]}
    sv = {d["category"]: d["score"] for d in voted["top"]}
    assert sv[target] > s[target]
    bad = run("classify", photo, "--bundle", bundle_dir, "--votes", "--title", "a chair")
    assert bad.exit_code == 2 and "cannot be combined" in bad.stderr
