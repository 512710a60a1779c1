"""The seed baselines end to end on a tiny synthetic cleaned + split data dir."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from mkt.training import baselines  # noqa: E402
from mkt.training.clean import clean  # noqa: E402
from mkt.training.split import write_split  # noqa: E402
from tests.synthetic import make_raw_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    raw = make_raw_dataset(root / "raw", listings_per_cat=10)
    data = clean(raw, root / "data") and root / "data"
    write_split(data, seed=0, val=0.2, test=0.25)
    # a £0 and an absurd price: the price rule must drop both
    import pandas as pd

    listings = pd.read_parquet(data / "listings.parquet")
    listings.loc[0, "price"] = 0.0
    listings.loc[1, "price"] = 5_000_000.0
    listings.to_parquet(data / "listings.parquet", index=False)
    for name in ("listings.parquet", "photos.parquet", "labels.json", "split.csv", "split.json",
                 "source.json"):
        assert (data / name).exists()
    return data


@pytest.fixture()
def small_grid(monkeypatch):
    monkeypatch.setattr(baselines, "ALPHAS", (0.1, 10.0))
    monkeypatch.setattr(baselines, "REL_ALPHAS", (0.01, 0.1))
    monkeypatch.setattr(baselines, "L1_RATIOS", (0.5,))
    monkeypatch.setattr(baselines, "CV_FOLDS", 2)


def test_price_baselines_drop_bad_prices_and_score_finite(data_dir, small_grid):
    import pandas as pd

    listings = pd.read_parquet(data_dir / "listings.parquet").merge(
        pd.read_csv(data_dir / "split.csv", dtype=str), on="product_id")
    rep = baselines.price_baselines(listings)
    c = rep["counts"]
    assert c["dropped_price"] == 2 and c["valid_price"] == len(listings) - 2
    assert c["fit_train_val"] + c["test"] == c["valid_price"] and c["test"] > 0
    for name in ("ridge", "lasso", "elasticnet"):
        raw, log = rep["models"][f"{name}_raw"], rep["models"][f"{name}_log"]
        assert math.isfinite(raw["test_r2"]) and math.isfinite(log["test_r2_log"])
    assert rep["models"]["ridge_raw"]["best_params"]["alpha"] in (0.1, 10.0)
    assert rep["models"]["elasticnet_raw"]["best_params"]["l1_ratio"] == 0.5


def test_price_features_levels_and_unknown_towns():
    import pandas as pd

    df = pd.DataFrame({"category": ["A", "B"], "category_path": ["A / x / y", "B"],
                       "county": ["C", ""], "town": ["T", "U"], "title": ["one two", ""],
                       "description": ["abc", "d"], "photo_ids": [["p"], []]})
    f = baselines.price_frame(df)
    assert f["path_1"].tolist() == ["A / x", "(none)"]
    assert f["path_2"].tolist() == ["A / x / y", "(none)"]
    assert f["county"].tolist() == ["C", "(none)"]
    assert f["n_photos"].tolist() == [1.0, 0.0]
    pipe = baselines._price_pipeline(__import__("sklearn.linear_model").linear_model.Ridge())
    pipe.fit(f, [1.0, 2.0])
    other = f.copy()
    other["town"] = ["never seen", "nor this"]
    other["county"] = ["Z", "Y"]
    assert np.isfinite(pipe.predict(other)).all()


def test_pixel_logreg_learns_the_tinted_photos(data_dir):
    from mkt.training.baselines import _photo_table

    photos = _photo_table(data_dir, None)
    rep = baselines.pixel_logreg_baseline(photos.paths, photos.label, photos.split,
                                          len(photos.labels), size=16)
    assert rep["features"] == 16 * 16 * 3 and rep["n_test"] > 0
    # synthetic photos carry a category tint: far above the 1/3 chance level
    assert rep["test_top1"] >= 0.6
    assert rep["best_C"] in baselines.PIXEL_CS


def test_run_baselines_writes_reports(data_dir, tmp_path, small_grid):
    out = tmp_path / "bl"
    rep = baselines.run_baselines(data_dir, out, cnn_epochs=1, limit=None, cnn_threads=1)
    saved = json.loads((out / "report.json").read_text())
    for key in ("majority", "price", "pixel_logreg", "small_cnn", "timings", "data"):
        assert key in saved
    assert 0.0 <= saved["small_cnn"]["test_top1"] <= 1.0
    assert saved["small_cnn"]["epochs_run"] == 1
    assert 0.0 <= saved["majority"]["test_top1"] <= 1.0
    assert math.isfinite(rep["price"]["models"]["ridge_log"]["test_r2_log"])
    md = (out / "report.md").read_text()
    assert "| baseline | metric | ours | seed figure |" in md and "0.088" in md
    assert "small CNN" in md and "£100,000" in md

    # the small CNN's checkpoint also drives `mkt evaluate` end to end (no ImageNet weights
    # exist for small_cnn, so the baseline column is marked unavailable, not faked)
    from mkt.training.evaluate import evaluate

    ev = evaluate(out / "small_cnn" / "best.pt", data=data_dir, out=tmp_path / "ev")
    for name in ("report.json", "report.md", "confusion.png", "per_class.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0
    assert ev["baseline"] is None and "unavailable" in ev["baseline_info"]
    ft = ev["finetuned"]
    assert 0.0 <= ft["photo_top1"] <= ft["photo_top3"] <= 1.0
    assert ev["counts"]["test_photos"] == saved["data"]["photos"]["test"]
    assert ev["data"]["split_matches_checkpoint"] is True
    assert "| metric | frozen ImageNet | fine-tuned | target | met |" in (
        tmp_path / "ev" / "report.md").read_text()
