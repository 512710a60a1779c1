"""Crash safety: ``mkt index add`` killed with SIGKILL part-way through a large add leaves an
index that loads and holds exactly its previous content (or exactly the completed add).

The child is the real CLI (``mkt.cli.main``) in a subprocess. One kill is timed by the
child's own progress output (mid-embedding). The others are pinned to the dangerous moments
of a commit by pausing the child there (a patched function writes a marker file and sleeps;
the test SIGKILLs it as soon as the marker appears): the new generation's files written but
not yet named by index.json, index.json.tmp written but not swapped, and swapped but the
old generation not yet deleted. ``mkt index build --force`` over an existing index gets the
same treatment.

The model is the tiny random-weight test bundle (``make_bundle``): what is tested is the index's
commit protocol, and a few hundred photos through the shipped model would cost minutes on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mkt.cli import app
from mkt.runtime.index import Index

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

N_COPIES = 300

CHILD = r"""
import os, sys, time
from pathlib import Path
stage, marker, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
import mkt.runtime.index as mi

def reached():
    marker.write_text(stage)
    time.sleep(120)  # the test kills us here

if stage == "files_written":  # generation files being fsynced, index.json untouched
    _fsync, calls = mi._fsync_file, []
    def fsync(p):
        _fsync(p)
        calls.append(p)
        if len(calls) == 2:
            reached()
    mi._fsync_file = fsync
elif stage == "before_swap":  # index.json.tmp complete, os.replace not yet done
    _replace = os.replace
    def replace(a, b):
        if str(b).endswith("index.json"):
            reached()
        return _replace(a, b)
    mi.os.replace = replace
elif stage == "after_swap":  # new index.json in place, old generation not yet deleted
    _cleanup = mi.Index._cleanup
    def cleanup(self, *a):
        reached()
        _cleanup(self, *a)
    mi.Index._cleanup = cleanup
from mkt.cli import main
main(argv)
"""


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(d.iterdir()) if p.is_file()}


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res


@pytest.fixture(scope="module")
def bundle_dir(make_bundle) -> Path:
    """The tiny test bundle (shadows conftest's: the shipped model is too slow here)."""
    return make_bundle(seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bundle_dir, dataset_dir):
    """(base index dir, folder of N_COPIES photo copies, query vectors, reference of the
    completed add: (ids, top-5 scores per query))."""
    root = tmp_path_factory.mktemp("crash")
    base = root / "base"
    res = _run("index", "build", dataset_dir, "--out", base, "--bundle", bundle_dir,
               "--M", "8", "--ef-construction", "40")
    assert res.exit_code == 0, res.output
    photos = sorted((dataset_dir / "images").glob("*.jpg"))
    many = root / "many"
    many.mkdir()
    for i in range(N_COPIES):
        src = photos[i % len(photos)]
        dst = many / f"copy-{i:04d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    from mkt.runtime.model import Model

    q = Model(bundle_dir, threads=1).embed(photos[:3])
    done = root / "done"
    shutil.copytree(base, done)
    res = _run("index", "add", done, many, "--bundle", bundle_dir, "--batch", "16")
    assert res.exit_code == 0, res.output
    full = Index.open(done)
    ref = (set(full.ids()), np.array([[h.score for h in hs] for hs in full.search(q, 5)]))
    assert len(ref[0]) == 26 + N_COPIES
    return base, many, q, ref


def _kill_when(cmd: list[str], stage: str, marker: Path, timeout: float = 240.0) -> None:
    """Start ``cmd``; SIGKILL it when ``marker`` appears (or, for stage ``embedding``, when
    its first progress line shows it is part-way through embedding)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        if stage == "embedding":
            for line in p.stderr:  # "mkt: embedding 32/300" every ~10%
                assert "Traceback" not in line
                m = re.match(r"mkt: embedding (\d+)/(\d+)", line)
                if m and 0 < int(m.group(1)) < int(m.group(2)):
                    break
            else:
                pytest.fail("the add finished before it could be killed")
        else:
            while not marker.exists():
                assert p.poll() is None, f"child exited early: {p.stderr.read()}"
                assert time.monotonic() - t0 < timeout, "child never reached " + stage
                time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL, (stage, p.returncode)


def _child(stage: str, marker: Path, *args: object) -> list[str]:
    return [sys.executable, "-c", CHILD, stage, str(marker), *map(str, args)]


@pytest.mark.parametrize(
    "stage, expect",
    [("embedding", "old"), ("files_written", "old"), ("before_swap", "old"),
     ("after_swap", "new")],
)
def test_sigkill_during_index_add(setup, bundle_dir, fixture_photos, tmp_path, stage, expect):
    base, many, q, (ref_ids, ref_scores) = setup
    d = tmp_path / "idx"
    shutil.copytree(base, d)
    before = _snapshot(d)
    old = Index.open(d)
    old_ids, old_hits = old.ids(), old.search(q, 5)
    marker = tmp_path / "reached"

    _kill_when(_child(stage, marker, "index", "add", d, many, "--bundle", bundle_dir,
                      "--batch", "16"), stage, marker)

    model_id = json.loads((bundle_dir / "manifest.json").read_text())["model_id"]
    idx = Index.open(d, model_id=model_id)  # verifies every file's sha256
    if expect == "old":
        assert idx.ids() == old_ids
        got = idx.search(q, 5)
        assert [[(h.id, h.score) for h in hs] for hs in got] == \
            [[(h.id, h.score) for h in hs] for hs in old_hits]
        # the committed files are untouched (stray new-generation files may lie beside them)
        info = json.loads((d / "index.json").read_text())
        for name in ["index.json", *info["files"]]:
            assert _snapshot(d)[name] == before[name]
    else:
        assert set(idx.ids()) == ref_ids
        # (the child embedded the photos in another process: equal up to float noise; the
        # many identical copies tie, so compare scores, not the order of equal ids)
        got = np.array([[h.score for h in hs] for hs in idx.search(q, 5)])
        np.testing.assert_allclose(got, ref_scores, atol=1e-4)

    # the next write works and leaves only the current generation (and the one before it,
    # for readers that have just read the old index.json) behind
    extra = tmp_path / "after-crash.jpg"
    shutil.copyfile(fixture_photos[0], extra)
    res = _run("index", "add", d, extra, "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    again = Index.open(d, model_id=model_id)
    assert again.count == idx.count + 1 and "after-crash" in again
    info = json.loads((d / "index.json").read_text())
    g = info["generation"]
    prev = {f"{k}-{g - 1}.{e}" for k, e in (("vectors", "hnsw"), ("meta", "sqlite"),
                                             ("ltext", "npy"), ("xmodal", "npy"))}
    names = {p.name for p in d.iterdir()}
    assert {"index.json", *info["files"]} <= names
    assert names <= {"index.json", "index.lock", *info["files"], *prev}, names


def test_sigkill_during_index_build_force(setup, bundle_dir, tmp_path):
    """Rebuilding over an existing index and dying before the swap keeps the old one."""
    base, many, q, _ = setup
    d = tmp_path / "idx"
    shutil.copytree(base, d)
    old = Index.open(d)
    old_ids, old_hits = old.ids(), old.search(q, 5)
    marker = tmp_path / "reached"
    _kill_when(_child("before_swap", marker, "index", "build", many, "--out", d, "--force",
                      "--bundle", bundle_dir, "--batch", "16"), "before_swap", marker)
    idx = Index.open(d)
    assert idx.ids() == old_ids
    assert [[(h.id, h.score) for h in hs] for hs in idx.search(q, 5)] == \
        [[(h.id, h.score) for h in hs] for hs in old_hits]
    assert idx.count == 26
