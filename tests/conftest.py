"""Shared pytest fixtures. Keep generic: other test modules add their own fixtures here.

- ``fixtures_dir`` / ``fixture_photos`` / ``dataset_dir``: the committed sample photos and the
  tiny dataset folder (original CSV format) under ``tests/fixtures``.
- ``bundle_dir``: the packaged bundle ``mkt/assets/bundle`` if it exists, else a tiny
  random-weight bundle built once per session (needs ``onnx``; skipped without it).
- ``make_bundle``: build a tiny random bundle with a given seed (another ``model_id``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_photos() -> list[Path]:
    """The committed sample photos (real 224x224 letterboxed marketplace photos)."""
    photos = sorted((FIXTURES / "photos").glob("*.jpg"))
    assert photos, "tests/fixtures/photos is empty"
    return photos


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    """A tiny dataset folder: Products.csv, Images.csv (original format), images/."""
    return FIXTURES / "dataset"


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``make_bundle(seed=0) -> Path`` of a tiny random bundle (cached per seed)."""
    pytest.importorskip("onnx")
    from tests.helpers_bundle import build_dev_bundle

    cache: dict[int, Path] = {}

    def make(seed: int = 0) -> Path:
        if seed not in cache:
            cache[seed] = build_dev_bundle(tmp_path_factory.mktemp(f"bundle{seed}"), seed=seed)
        return cache[seed]

    return make


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged bundle if present, else a tiny random one (same I/O contract)."""
    packaged = REPO / "mkt" / "assets" / "bundle"
    if (packaged / "manifest.json").is_file():
        return packaged
    pytest.importorskip("onnx")
    from tests.helpers_bundle import build_dev_bundle

    return build_dev_bundle(tmp_path_factory.mktemp("bundle"))
