"""Support for the text-search tests (no tests here): one MiniLM ONNX export per machine
(cached), a bundle dir that ships it.

The export (torch + transformers, ~1 min) is cached in ``$TMPDIR/mkt-test-cache/minilm-*``
keyed by the export module's source, so a changed exporter is re-run. Skips when the
``train`` extra or the MiniLM weights are absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def text_model_dir() -> Path:
    """Folder with ``text.int8.onnx`` (or fp32) + ``tokenizer.json`` + ``text.json`` (the
    manifest section), exported once and cached."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("all_minilm_l6_v2")
    src = (REPO / "mkt" / "export" / "text_export.py").read_bytes()
    key = hashlib.sha256(src).hexdigest()[:12]
    cache = Path(os.environ.get("MKT_TEST_CACHE", Path(tempfile.gettempdir()) / "mkt-test-cache"))
    d = cache / f"minilm-{key}"
    if (d / "text.json").is_file():
        return d
    from mkt.export.text_export import export_text_model

    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".minilm-{key}-", dir=cache))
    texts = [
        "Oak dining table with four chairs", "Mountain bike, 26 inch wheels, good condition",
        "iPhone 12 64GB unlocked", "Baby pram in grey, folds flat",
        "Solid pine wardrobe. Collection only, buyer must dismantle.",
        "Brand new in box, never used. Posted by Ann in Kitchen Appliances in Leeds.",
    ]
    sec = export_text_model(tmp, int8=True, check_texts=texts, log=lambda m: None)
    (tmp / "text.json").write_text(json.dumps(sec))
    try:
        tmp.rename(d)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def text_section(d: Path) -> dict:
    return json.loads((d / "text.json").read_text())


def bundle_with_text(base: Path, text_dir: Path, out: Path) -> Path:
    """A copy of the bundle ``base`` whose manifest also ships the text model (``"text"``
    section, files hashed), as the bundle exporter writes it."""
    from mkt.runtime.bundle import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    m = json.loads((base / "manifest.json").read_text())
    for name in m["files"]:
        shutil.copyfile(base / name, out / name)
    sec = text_section(text_dir)
    for name in (sec["model"], sec["tokenizer"]):
        shutil.copyfile(text_dir / name, out / name)
        m["files"][name] = sha256_file(out / name)
    m["text"] = sec
    (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return out
