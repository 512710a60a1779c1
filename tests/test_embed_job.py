"""`mkt embed` (local and Ray engines) and `mkt index build VECTORS_DIR`.

Ray is real: a local Ray with 2 CPUs, started once for this module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import jlines, run

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def local_vectors(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path,
                  dataset_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("vec") / "local"
    res = run("embed", str(dataset_dir), "--out", str(out), "--bundle", str(bundle_dir),
              "--precision", "fp32", "--threads", "1", "--json")
    assert res.exit_code == 0, res.stderr
    assert jlines(res.stdout)[0]["count"] == 26
    return out


def _vectors(d: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(d, columns=["id", "embedding", "error"])
    return {i: np.asarray(v, np.float32) for i, v, e in
            zip(t["id"].to_pylist(), t["embedding"].to_pylist(), t["error"].to_pylist(),
                strict=True) if e is None}


def test_local_shards_schema_and_manifest(local_vectors: Path, bundle_dir: Path) -> None:
    m = json.loads((local_vectors / "_manifest.json").read_text())
    bundle_id = json.loads((bundle_dir / "manifest.json").read_text())["model_id"]
    assert m["model_id"] == bundle_id and m["count"] == 26 and m["errors"] == 0
    t = pq.read_table(local_vectors / m["shards"][0])
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), m["dim"])
    assert t["title"].null_count < len(t)  # listing fields travel with the vectors
    v = np.asarray(t["embedding"].to_pylist(), np.float32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)


def test_photo_list_with_a_bad_photo(tmp_path: Path, bundle_dir: Path, dataset_dir: Path,
                                     local_vectors: Path) -> None:
    imgs = sorted((dataset_dir / "images").glob("*.jpg"))[:3]
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    pq.write_table(pa.table({"path": [str(p) for p in imgs] + ["bad.jpg"],
                             "product_id": ["p1", "p1", "p2", "p3"]}),
                   tmp_path / "list.parquet")
    out = tmp_path / "v"
    res = run("embed", str(tmp_path / "list.parquet"), "--out", str(out), "--bundle",
              str(bundle_dir), "--precision", "fp32", "--threads", "1")
    assert res.exit_code == 1  # one photo failed, the others done
    assert "bad.jpg" in res.stderr and "Traceback" not in res.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["count"] == 3 and m["errors"] == 1
    assert m["error_list"][0]["path"].endswith("bad.jpg")
    got, ref = _vectors(out), _vectors(local_vectors)
    for p in imgs:  # same photo, same vector, whatever the batch it came in
        assert np.abs(got[p.stem] - ref[p.stem]).max() < 1e-6


def test_ray_engine_matches_local(tmp_path: Path, bundle_dir: Path, dataset_dir: Path,
                                  local_vectors: Path) -> None:
    """Ray Data reads a photo list itself, runs the bundle in an actor pool; the vectors are
    the local engine's, the bad photo is an error row and the job carries on."""
    ray = pytest.importorskip("ray")

    imgs = sorted((dataset_dir / "images").glob("*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    lst = tmp_path / "list.csv"  # one bad photo, given relative to the list's folder
    lst.write_text("path\n" + "\n".join([str(p) for p in imgs] + ["bad.jpg"]) + "\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run("embed", str(lst), "--out", str(tmp_path / "ray_list"), "--engine", "ray",
                  "--batch-size", "4", "--bundle", str(bundle_dir), "--precision", "fp32")
        assert res.exit_code == 1 and "bad.jpg" in res.stderr, res.stderr
    finally:
        ray.shutdown()
    m = json.loads((tmp_path / "ray_list" / "_manifest.json").read_text())
    assert m["engine"] == "ray" and m["count"] == 26 and m["errors"] == 1
    ref, got = _vectors(local_vectors), _vectors(tmp_path / "ray_list")
    assert got.keys() == ref.keys()
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst <= 1e-6, worst


def test_index_build_from_vectors(tmp_path: Path, bundle_dir: Path, local_vectors: Path,
                                  dataset_dir: Path) -> None:
    idx = tmp_path / "idx"
    res = run("index", "build", str(local_vectors), "--out", str(idx), "--bundle",
              str(bundle_dir), "--precision", "fp32")
    assert res.exit_code == 0, res.stderr
    assert "precomputed" in res.stderr
    # the same index, file for file, as one built from the photos themselves
    ref = tmp_path / "ref"
    res = run("index", "build", str(dataset_dir), "--out", str(ref), "--bundle",
              str(bundle_dir), "--precision", "fp32")
    assert res.exit_code == 0, res.stderr
    files = [json.loads((d / "index.json").read_text())["files"] for d in (idx, ref)]
    assert files[0] == files[1]
    photo = sorted((dataset_dir / "images").glob("*.jpg"))[0]
    res = run("similar", str(photo), "--index", str(idx), "--bundle", str(bundle_dir),
              "--precision", "fp32", "--json", "-k", "1")
    assert res.exit_code == 0, res.stderr
    assert jlines(res.stdout)[0]["results"][0]["id"] == photo.stem
    res = run("search", "sofa", "--index", str(idx), "--bundle", str(bundle_dir), "--json")
    assert res.exit_code == 0, res.stderr  # text search works on an index built from vectors


def test_index_build_refuses_vectors_of_another_model(tmp_path: Path, local_vectors: Path,
                                                      bundle_dir: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(local_vectors, other)
    m = json.loads((other / "_manifest.json").read_text())
    m["model_id"] = "0123456789abcdef"
    (other / "_manifest.json").write_text(json.dumps(m))
    res = run("index", "build", str(other), "--out", str(tmp_path / "idx"), "--bundle",
              str(bundle_dir))
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "0123456789abcdef" in line and m["model_id"] != line and "\n" not in line
    bundle_id = json.loads((bundle_dir / "manifest.json").read_text())["model_id"]
    assert bundle_id in line
