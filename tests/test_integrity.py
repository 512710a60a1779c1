"""Integrity: a bundle or index altered by one byte is refused with one clear line, and an index
built by another model is refused, by every command that reads them.

- data files (the ONNX model, the hnsw vectors, the sqlite metadata): sha256 listed in
  manifest.json / index.json, so any changed byte is refused ("sha256 mismatch").
- the roots of trust (manifest.json, index.json): every single-byte change (each position,
  bit 0 flipped) is either refused, or only changes something that cannot matter
  (e.g. the `ef` search default, version strings) -- with one known exception: the
  text of a label in manifest.json (see docs/bad_input.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mkt.cli import app
from mkt.runtime.bundle import load_bundle
from mkt.runtime.errors import BundleError, MktError, MktIndexError
from mkt.runtime.index import Index
from tests.conftest import run


def flip(path: Path, pos: int, bit: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= bit
    path.write_bytes(bytes(data))


def assert_fatal_one_line(res, *needles: str) -> None:
    """Exit 2, exactly one stderr line, ``mkt: error: ...`` containing every needle."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mkt: error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _has(cmd: str) -> bool:
    return cmd in {c.name for c in app.registered_commands}


@pytest.fixture(scope="module")
def tiny(make_bundle) -> Path:
    """The tiny test bundle: the index tests need a model, not the shipped one (whose
    bundle files are the ones tampered with in the bundle tests)."""
    return make_bundle(seed=0)


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny, dataset_dir) -> Path:
    out = tmp_path_factory.mktemp("integ") / "index"
    res = run("index", "build", dataset_dir, "--out", out, "--bundle", tiny,
              "--M", "8", "--ef-construction", "40")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture()
def no_uvicorn(monkeypatch):
    """`mkt serve` must fail before serving; if it ever gets that far, do not block."""
    uvicorn = pytest.importorskip("uvicorn")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    return calls


def _commands_reading_bundle(bundle: Path, index: Path, photo: Path, tmp: Path):
    """(name, argv) of every runtime command, each given ``bundle``."""
    cmds = [
        ("classify", ["classify", photo, "--bundle", bundle]),
        ("similar", ["similar", photo, "--index", index, "--bundle", bundle]),
        ("index build", ["index", "build", photo.parent, "--out", tmp / "new-index",
                         "--bundle", bundle]),
        ("index add", ["index", "add", index, photo, "--bundle", bundle]),
        ("info", ["info", "--bundle", bundle, "--index", index]),
    ]
    if _has("price"):
        cmds.append(("price", ["price", photo, "--index", index, "--bundle", bundle]))
    if _has("dupes"):
        cmds.append(("dupes", ["dupes", photo, "--bundle", bundle]))
    return cmds


# -- bundle data files ------------------------------------------------------------------------


def test_bundle_file_one_byte_refused_by_every_command(bundle_dir, built_index, fixture_photos,
                                                       tmp_path):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    index_before = sorted(p.name for p in built_index.iterdir())
    for name in manifest["files"]:
        size = (bundle_dir / name).stat().st_size
        for pos in (0, size // 2, size - 1):
            b = tmp_path / f"b-{Path(name).stem}-{pos}"
            shutil.copytree(bundle_dir, b)
            flip(b / name, pos)
            with pytest.raises(BundleError, match="sha256 mismatch"):
                load_bundle(b)
            if pos != size // 2:
                continue  # the CLI round only once a file: the check is the same
            for what, argv in _commands_reading_bundle(b, built_index, fixture_photos[0],
                                                       tmp_path):
                res = run(*argv)
                assert_fatal_one_line(res, str(b / name), "sha256 mismatch")
                assert what  # (for the failure message)
    assert sorted(p.name for p in built_index.iterdir()) == index_before  # nothing written
    assert not (tmp_path / "new-index").exists()


def test_bundle_tamper_refused_by_serve(bundle_dir, built_index, tmp_path, no_uvicorn):
    serve = pytest.importorskip("mkt.serve")
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    name = next(iter(json.loads((b / "manifest.json").read_text())["files"]))
    flip(b / name, (b / name).stat().st_size // 3)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        serve.create_app(b, built_index, eager=True)
    res = run("serve", "--bundle", b, "--index", built_index, "--port", "0")
    assert_fatal_one_line(res, "sha256 mismatch")
    assert no_uvicorn == []


# -- index data files -------------------------------------------------------------------------


def _index_commands(index: Path, bundle: Path, photo: Path):
    cmds = [
        ["similar", photo, "--index", index, "--bundle", bundle],
        ["index", "add", index, photo, "--bundle", bundle],
        ["index", "info", index],
        ["index", "remove", index, photo.stem],
        ["info", "--bundle", bundle, "--index", index],
    ]
    if _has("price"):
        cmds.append(["price", photo, "--index", index, "--bundle", bundle])
    if _has("dupes"):
        cmds.append(["dupes", photo, "--index", index, "--bundle", bundle])
    return cmds


@pytest.mark.parametrize("kind", ["hnsw", "sqlite"])
def test_index_file_one_byte_refused_by_every_command(built_index, tiny, fixture_photos,
                                                      tmp_path, kind):
    info = json.loads((built_index / "index.json").read_text())
    name = next(n for n in info["files"] if n.endswith(kind))
    size = (built_index / name).stat().st_size
    for pos in (0, size // 2, size - 1):
        d = tmp_path / f"idx{pos}"
        shutil.copytree(built_index, d)
        flip(d / name, pos)
        with pytest.raises(MktIndexError, match="sha256 mismatch"):
            Index.open(d)
        if pos != size // 2:
            continue
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        for argv in _index_commands(d, tiny, fixture_photos[0]):
            assert_fatal_one_line(run(*argv), str(d / name), "sha256 mismatch")
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing rewritten


def test_index_tamper_refused_by_serve(built_index, tiny, tmp_path, no_uvicorn):
    serve = pytest.importorskip("mkt.serve")
    d = tmp_path / "idx"
    shutil.copytree(built_index, d)
    info = json.loads((d / "index.json").read_text())
    name = next(n for n in info["files"] if n.endswith("hnsw"))
    flip(d / name, 100)
    with pytest.raises(MktIndexError, match="sha256 mismatch"):
        serve.create_app(tiny, d, eager=True)
    res = run("serve", "--bundle", tiny, "--index", d, "--port", "0")
    assert_fatal_one_line(res, "sha256 mismatch")
    assert no_uvicorn == []


# -- another model ----------------------------------------------------------------------------


def test_index_of_another_model_refused_by_every_command(built_index, make_bundle,
                                                         fixture_photos, tmp_path, no_uvicorn):
    other = make_bundle(seed=1)
    ours = json.loads((built_index / "index.json").read_text())["model_id"]
    theirs = json.loads((other / "manifest.json").read_text())["model_id"]
    assert ours != theirs
    d = tmp_path / "idx"
    shutil.copytree(built_index, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    photo = fixture_photos[0]
    cmds = [
        ["similar", photo, "--index", d, "--bundle", other],
        ["index", "add", d, photo, "--bundle", other],
    ]
    if _has("price"):
        cmds.append(["price", photo, "--index", d, "--bundle", other])
    if _has("dupes"):
        cmds.append(["dupes", photo, "--index", d, "--bundle", other])
    if _has("serve"):
        cmds.append(["serve", "--index", d, "--bundle", other, "--port", "0"])
    for argv in cmds:
        assert_fatal_one_line(run(*argv), ours, theirs, "not comparable")
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    try:
        import mkt.serve as serve
    except ImportError:
        return
    with pytest.raises(MktIndexError, match="not comparable"):
        serve.create_app(other, d, eager=True)
    assert no_uvicorn == []


# -- the roots of trust: every single-byte change ---------------------------------------------


def _vecs(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_every_byte_of_index_json(tmp_path):
    """Each byte of index.json flipped in turn: refused (MktIndexError, one line), or the
    index is the same (same ids, same search results). Never another exception, never
    garbage from a wrong `dim` (hnswlib would read out of bounds)."""
    d = tmp_path / "idx"
    ids = [f"p{i}" for i in range(30)]
    Index.create(d, model_id="abcdef0123456789", dim=8, ids=ids, vectors=_vecs(30),
                 meta=[{"title": f"t{i}", "price": float(i)} for i in range(30)],
                 M=8, ef_construction=40, ef=16)
    q = _vecs(4, seed=1)
    ref = [[(h.id, round(h.score, 5)) for h in hs] for hs in Index.open(d).search(q, 5)]
    ij = d / "index.json"
    orig = ij.read_bytes()
    refused = accepted = 0
    for pos in range(len(orig)):
        data = bytearray(orig)
        data[pos] ^= 0x01
        ij.write_bytes(bytes(data))
        try:
            idx = Index.open(d, model_id="abcdef0123456789")
        except MktIndexError as e:
            assert "\n" not in str(e) and str(d) in str(e)
            refused += 1
            continue
        accepted += 1
        new, old = json.loads(bytes(data)), json.loads(orig)
        changed = {k for k in old if old[k] != new.get(k)}  # (unknown new keys are ignored)
        # search defaults, and "space" whose only allowed value is also the default
        assert changed <= {"ef", "M", "ef_construction", "space"}, (pos, changed)
        assert idx.ids() == ids
        got = [[(h.id, round(h.score, 5)) for h in hs] for hs in idx.search(q, 5)]
        assert got == ref, (pos, changed)
    ij.write_bytes(orig)
    assert refused > 0.8 * len(orig), (refused, accepted)


def test_every_byte_of_manifest_json(make_bundle, tmp_path):
    """Each byte of manifest.json flipped in turn: refused (BundleError, by load_bundle or
    when the model is built), or the bundle still works the same: same model file and the
    same input/output contract. What is not caught, by design: version/training notes, the
    model_id (then every index is refused: it no longer matches) and label texts."""
    from mkt.runtime.model import Model

    src = make_bundle(seed=0)
    b = tmp_path / "b"
    shutil.copytree(src, b)
    mp = b / "manifest.json"
    orig_bytes = mp.read_bytes()
    orig = json.loads(orig_bytes)
    base = load_bundle(b)
    x = np.zeros((1, base.input_size, base.input_size, 3), np.uint8)
    ref_logits, ref_emb = Model(base, threads=1).predict(x)
    harmless = {"versions", "training", "export", "parity", "arch", "preprocessing"}
    contract = ("input_size", "input_name", "embedding_dim", "logits_name", "embedding_name")
    refused = accepted = 0
    for pos in range(len(orig_bytes)):
        data = bytearray(orig_bytes)
        data[pos] ^= 0x01
        mp.write_bytes(bytes(data))
        try:
            bun = load_bundle(b)
            new = json.loads(bytes(data))
            # (a renamed optional key counts as the original one removed; unknown keys are
            # ignored by the runtime)
            changed = {k for k in orig if orig[k] != new.get(k)}
            if changed <= harmless | {"labels", "model_id"}:
                # model file and contract untouched (no onnxruntime session needed to tell)
                assert bun.model_path() == base.model_path()
                assert [getattr(bun, a) for a in contract] == [getattr(base, a)
                                                               for a in contract]
                assert len(bun.labels) == len(base.labels)
                accepted += 1
                continue
            m = Model(bun, threads=1)
        except BundleError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        except MktError as e:  # pragma: no cover - wrong type
            pytest.fail(f"byte {pos}: {type(e).__name__}: {e}")
        accepted += 1
        # what may differ: labels (text), model_id, and keys renamed back to their defaults;
        # the effective contract below must be the original one
        assert changed <= harmless | {"labels", "model_id", "models", "default", "outputs",
                                      "input"}, (pos, changed)
        assert bun.model_path(m.variant) == base.model_path()
        assert [getattr(bun, a) for a in contract] == [getattr(base, a) for a in contract]
        assert len(bun.labels) == len(base.labels)
        logits, emb = m.predict(x)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
        np.testing.assert_allclose(emb, ref_emb, atol=1e-5)
    mp.write_bytes(orig_bytes)
    assert refused > 0.5 * len(orig_bytes), (refused, accepted)  # the rest: notes, labels


def test_manifest_contract_lies_refused(make_bundle, tmp_path):
    """A manifest whose contract disagrees with its graph is refused when the model is
    built, naming the mismatch (not an onnxruntime error on the first photo)."""
    from mkt.runtime.model import Model

    src = make_bundle(seed=0)
    for key, value, needle in [
        ("embedding_dim", 255, "embedding_dim"),
        ("labels", ["a", "b"], "labels"),
        ("input", {"name": "image", "size": 225}, "input"),
    ]:
        b = tmp_path / f"b-{key}"
        shutil.copytree(src, b)
        m = json.loads((b / "manifest.json").read_text())
        m[key] = value if key != "input" else {**m["input"], **value}
        (b / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=needle):
            Model(b, threads=1)


def test_index_json_wrong_dim_refused(built_index, tiny, fixture_photos, tmp_path):
    """index.json says another dim than its vectors file: refused, not garbage scores."""
    d = tmp_path / "idx"
    shutil.copytree(built_index, d)
    info = json.loads((d / "index.json").read_text())
    info["dim"] = info["dim"] + 1
    (d / "index.json").write_text(json.dumps(info))
    with pytest.raises(MktIndexError, match="dim"):
        Index.open(d)
    res = run("similar", fixture_photos[0], "--index", d, "--bundle", tiny)
    assert_fatal_one_line(res, "dim")


# -- no pickle: nothing that loads a file can run code from it -------------------------------

REPO = Path(__file__).resolve().parent.parent
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}


def _py_files(*roots: str) -> list[Path]:
    out = []
    for r in roots:
        p = REPO / r
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return [p for p in out if "venv" not in p.parts and "__pycache__" not in p.parts]


def _runtime_files() -> list[Path]:
    """The torch-free side: mkt/runtime and every mkt/*.py that is not training/export."""
    return _py_files("mkt/runtime") + sorted((REPO / "mkt").glob("*.py")) + [
        p for p in sorted((REPO / "mkt" / "cli").glob("*.py"))
        if p.name not in ("train.py", "export.py")
    ]


def pickle_uses(src: str) -> list[str]:
    """``import pickle``-family imports and ``pickle.<x>`` / ``.read_pickle(`` uses."""
    import ast
    import re

    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in \
                PICKLE_MODULES:
            found.append(node.module or "")
    found += re.findall(r"\b(?:c?[Pp]ickle|dill|joblib)\.\w+|\.read_pickle\(", src)
    return found


def unsafe_loads(src: str) -> list[str]:
    """``torch.load(...)`` calls without ``weights_only=True`` (also ``from torch import
    load``) and ``np.load(..., allow_pickle=<anything but False>)``."""
    import ast

    bad = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(
                a.name == "load" for a in node.names):
            bad.append(f"line {node.lineno}: from torch import load")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if name in ("torch.load", "th.load"):
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif name in ("np.load", "numpy.load"):
            v = kw.get("allow_pickle")
            if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
            if None in kw:  # **kwargs could smuggle allow_pickle=True
                bad.append(f"line {node.lineno}: {ast.unparse(node)} (**kwargs)")
    return bad


def test_scanners_catch_what_they_should():
    assert pickle_uses("import pickle\n") == ["pickle"]
    assert pickle_uses("from joblib import load\n") == ["joblib"]
    assert pickle_uses("x = pickle.loads(b)\n")
    assert pickle_uses("df = pd.read_pickle(p)\n")
    assert pickle_uses("import json\nx = json.loads(s)  # no pickling here\n") == []
    assert unsafe_loads("torch.load(p)\n")
    assert unsafe_loads("torch.load(p, weights_only=False)\n")
    assert unsafe_loads("torch.load(p, weights_only=flag)\n")
    assert unsafe_loads("from torch import load\n")
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\n") == []
    assert unsafe_loads("np.load(p, allow_pickle=True)\n")
    assert unsafe_loads("np.load(p, **kw)\n")
    assert unsafe_loads("np.load(p)\nnp.load(p, allow_pickle=False)\n") == []


def test_no_pickle_in_the_runtime():
    files = _runtime_files()
    assert REPO / "mkt" / "cli" / "photos.py" in files
    assert any(p.name == "index.py" for p in files)
    offenders = {str(p.relative_to(REPO)): u for p in files
                 if (u := pickle_uses(p.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_every_load_is_weights_only_and_pickle_free():
    files = _py_files("mkt", "benchmarks", "tests")
    assert len(files) > 20
    offenders = {str(p.relative_to(REPO)): u for p in files
                 if (u := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert offenders == {}
