"""Concurrency: several processes writing and reading one index folder.

- Writers serialise on the index's lock: N processes adding and removing at once end with
  exactly the serial result, every time; a writer that cannot get the lock in time says
  "index busy" (exit 2 from the CLI) and writes nothing.
- A writer SIGKILLed while it holds the lock (mid-commit) does not block the others or break
  the index: the other writer carries on, the index loads, the next write repairs it.
- Readers in a loop during all of this never fail.

The index is a small synthetic one (``Index.create`` with random vectors): no model needed.
Children are plain ``python -c`` processes importing ``mkt.runtime.index``.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mkt.cli import app
from mkt.runtime import index as mi
from mkt.runtime.errors import MktIndexError
from mkt.runtime.index import Index

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock/SIGKILL are POSIX")

DIM = 16
N_BASE = 40


def _vec(key: str) -> np.ndarray:
    """A unit vector determined by ``key`` (the children run this same source)."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    return v / np.linalg.norm(v)


VEC = "import numpy as np\n" + inspect.getsource(_vec)


def _base(d: Path) -> None:
    ids = [f"p{i}" for i in range(N_BASE)]
    Index.create(d, model_id="m1", dim=DIM, ids=ids, vectors=np.stack([_vec(i) for i in ids]),
                 meta=[{"product_id": f"L{i // 2}", "title": f"thing {i}"}
                       for i in range(N_BASE)], M=8, ef_construction=40, ef=32)


# A child: waits for the go file, then does its writes. argv: dir go worker-kind args...
WRITER = r"""
import sys, time, json
from pathlib import Path
import numpy as np
exec(sys.argv[1])
from mkt.runtime.index import Index
d, go, kind, wid = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
n = int(sys.argv[6])
while not go.exists():
    time.sleep(0.005)
if kind == "add-stale":  # one Index object kept across its adds: must catch up each time
    idx = Index.open(d)
    for j in range(n):
        i = f"w{wid}-{j}"
        idx.add([i], _vec(i)[None], [{"product_id": f"W{wid}", "title": f"new {i}"}])
elif kind == "add-fresh":  # opens the index anew for each add
    for j in range(n):
        i = f"w{wid}-{j}"
        Index.open(d).add([i], _vec(i)[None], [{"product_id": f"W{wid}", "title": f"new {i}"}])
elif kind == "remove":
    idx = Index.open(d)
    for j in range(n):
        missing = idx.remove([f"p{j}"])
        assert missing == [], missing
"""

# A reader: opens + searches in a loop until the stop file appears; writes its tally.
# hnswlib's load is slowed (a slow disk / a big index), so a reader is still loading the
# generation it read in index.json when a writer commits the next one.
READER = r"""
import sys, time, json, traceback
from pathlib import Path
import numpy as np
import hnswlib
_load = hnswlib.Index.load_index
def slow_load(self, *a, **k):
    time.sleep(float(sys.argv[4]))
    return _load(self, *a, **k)
hnswlib.Index.load_index = slow_load
from mkt.runtime.index import Index
d, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
opens = fails = 0
errors = []
q = np.ones((1, 16), np.float32)
while not stop.exists():
    try:
        idx = Index.open(d)
        hits = idx.search(q, 5)[0]
        assert len(hits) == min(5, idx.count) and len(idx.ids()) == idx.count
        opens += 1
    except BaseException as e:
        fails += 1
        errors.append(f"{type(e).__name__}: {e}")
out.write_text(json.dumps({"opens": opens, "failures": fails, "errors": errors[:5]}))
"""

TESTS = VEC  # the children's first argument: the source of _vec


def _writer(d: Path, go: Path, kind: str, wid: object, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, TESTS, str(d), str(go), kind,
                             str(wid), str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reader(d: Path, stop: Path, out: Path, delay: float = 0.02) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, str(d), str(stop), str(out),
                             str(delay)], stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


def _tally(reader: subprocess.Popen, stop: Path, out: Path) -> dict:
    stop.touch()
    rc, err = _finish(reader, 60)
    assert rc == 0, err
    return json.loads(out.read_text())


def _allowed(d: Path) -> set[str]:
    info = json.loads((d / "index.json").read_text())
    g = info["generation"]
    prev = {f"{k}-{g - 1}.{e}" for k, e in (("vectors", "hnsw"), ("meta", "sqlite"),
                                             ("ltext", "npy"), ("xmodal", "npy"))}
    return {"index.json", mi.LOCK_NAME, *info["files"], *prev}


def _check_content(d: Path, want: set[str]) -> Index:
    idx = Index.open(d)  # verifies every sha256
    assert set(idx.ids()) == want, (sorted(set(idx.ids()) ^ want))
    assert idx.count == len(want)
    for i in sorted(want)[::7]:  # the vectors are the right ones, not just the rows
        top = idx.search(_vec(i), 1)[0][0]
        assert top.id == i and top.score == pytest.approx(1.0, abs=1e-4)
    return idx


TRIALS = 3
WRITERS = 4  # processes adding ADDS one-photo adds each, plus one removing REMOVES photos
ADDS = 10
REMOVES = 5


def test_parallel_writers_equal_serial_result(tmp_path):
    """4 processes x 10 one-photo adds + 5 one-photo removes from a 5th, all at once, plus a
    reader in a loop; three trials. Every trial ends with exactly the serial result, every
    writer exits 0, the reader never fails."""
    want = ({f"p{i}" for i in range(REMOVES, N_BASE)}
            | {f"w{w}-{j}" for w in range(WRITERS) for j in range(ADDS)})
    total_opens = 0
    for trial in range(TRIALS):
        d = tmp_path / f"idx{trial}"
        _base(d)
        go, stop, out = tmp_path / f"go{trial}", tmp_path / f"stop{trial}", \
            tmp_path / f"reader{trial}.json"
        kinds = ["add-stale", "add-fresh"]
        procs = [_writer(d, go, kinds[w % 2], w, ADDS) for w in range(WRITERS)]
        procs.append(_writer(d, go, "remove", "r", REMOVES))
        reader = _reader(d, stop, out)
        time.sleep(0.5)  # let the children import
        go.touch()
        results = [_finish(p) for p in procs]
        tally = _tally(reader, stop, out)
        for rc, err in results:
            assert rc == 0, err
        assert tally["failures"] == 0, tally
        total_opens += tally["opens"]
        _check_content(d, want)
        assert json.loads((d / "index.json").read_text())["generation"] == \
            WRITERS * ADDS + REMOVES  # one generation per write, none lost
        assert {p.name for p in d.iterdir()} <= _allowed(d)
    assert total_opens > 0


def test_busy_writer_gives_up_and_writes_nothing(tmp_path):
    """While another process holds the lock: the CLI says "index busy" in one line, exit 2,
    after --wait seconds; the runtime raises IndexBusyError; nothing is written."""
    d = tmp_path / "idx"
    _base(d)
    def files():  # (index.lock is rewritten with its holder's pid by each writer)
        return {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.name != mi.LOCK_NAME}

    before = files()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mkt.runtime.index import writer_lock\n"
         "with writer_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
         str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        res = CliRunner().invoke(app, ["index", "remove", str(d), "p1", "--wait", "0.3"])
        took = time.monotonic() - t0
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mkt: error: ") and \
            "index busy" in lines[0] and f"pid {holder.pid}" in lines[0] and "--wait" in \
            lines[0], res.stderr
        assert 0.3 <= took < 10
        idx = Index.open(d)
        idx.wait = 0.1
        with pytest.raises(mi.IndexBusyError, match="index busy"):
            idx.add(["x"], _vec("x")[None])
        assert "x" not in idx and idx.count == N_BASE  # rolled back in memory too
        with pytest.raises(mi.IndexBusyError):
            Index.create(d, model_id="m1", dim=DIM, overwrite=True, wait=0)
    finally:
        holder.kill()
        holder.wait()
    assert files() == before
    # the lock dies with its holder: the same remove now goes through at once
    res = CliRunner().invoke(app, ["index", "remove", str(d), "p1", "--wait", "5"])
    assert res.exit_code == 0, res.output
    assert "p1" not in Index.open(d)


# A writer that pauses (holding the lock) at a stage of its commit, to be SIGKILLed there.
VICTIM = r"""
import os, sys, time
from pathlib import Path
import numpy as np
exec(sys.argv[1])
import mkt.runtime.index as mi
d, stage, marker = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

def reached():
    marker.write_text(stage)
    time.sleep(120)  # the test kills us here

if stage == "files_written":  # all 4 generation files written + fsynced, index.json untouched
    _fsync, calls = mi._fsync_file, []
    def fsync(p):
        _fsync(p)
        calls.append(p)
        if len(calls) == 4:
            reached()
    mi._fsync_file = fsync
elif stage == "before_swap":  # index.json tmp written, not yet renamed
    _replace = os.replace
    def replace(a, b):
        if str(b).endswith("index.json"):
            reached()
        return _replace(a, b)
    mi.os.replace = replace
elif stage == "after_swap":  # new index.json in place, older generations not yet deleted
    _cleanup = mi.Index._cleanup
    def cleanup(self, *a):
        reached()
        _cleanup(self, *a)
    mi.Index._cleanup = cleanup
mi.Index.open(d).add(["victim"], _vec("victim")[None], [{"title": "victim"}])
"""


@pytest.mark.parametrize("stage", ["files_written", "before_swap", "after_swap"])
def test_sigkill_writer_while_another_writes_and_reader_reads(tmp_path, stage):
    """A writer is SIGKILLed mid-commit (holding the lock) while a second writer waits for
    the lock and a reader loops. The second writer then completes all its adds, the reader
    never fails, the index loads with exactly the expected content (the victim's photo only
    if it died after the swap), and the next write removes the junk it left."""
    d = tmp_path / "idx"
    _base(d)
    go, stop, out, marker = (tmp_path / n for n in ("go", "stop", "reader.json", "marker"))
    reader = _reader(d, stop, out)
    other = _writer(d, go, "add-stale", 0, 8)
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, TESTS, str(d), stage,
                               str(marker)], stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not marker.exists():
            assert victim.poll() is None, victim.stderr.read()
            assert time.monotonic() - t0 < 60, "victim never reached " + stage
            time.sleep(0.01)
        go.touch()  # the other writer starts now: it has to wait for the victim's lock
        time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        rc, err = _finish(other)
        assert rc == 0, err
    finally:
        for p in (victim, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        victim.stderr.close()
    tally = _tally(reader, stop, out)
    assert tally["failures"] == 0 and tally["opens"] > 0, tally

    want = {f"p{i}" for i in range(N_BASE)} | {f"w0-{j}" for j in range(8)}
    if stage == "after_swap":
        want.add("victim")
    idx = _check_content(d, want)
    # after the crash the next write succeeds and cleans up
    idx.wait = 10
    idx.add(["after"], _vec("after")[None])
    _check_content(d, want | {"after"})
    names = {p.name for p in d.iterdir()}
    assert names <= _allowed(d) and not any(n.endswith(".tmp") for n in names), names


def test_readers_never_fail_while_writers_commit(tmp_path):
    """Two slow readers (hnswlib load delayed) in a loop while two writers commit 15 times
    each: no open fails; each reader sees a consistent generation every time."""
    d = tmp_path / "idx"
    _base(d)
    go, stop = tmp_path / "go", tmp_path / "stop"
    readers = [(_reader(d, stop, tmp_path / f"r{i}.json", delay), tmp_path / f"r{i}.json")
               for i, delay in enumerate((0.0, 0.05))]
    time.sleep(0.3)
    writers = [_writer(d, go, "add-fresh", w, 15) for w in range(2)]
    go.touch()
    for p in writers:
        rc, err = _finish(p)
        assert rc == 0, err
    tallies = [_tally(r, stop, out) for r, out in readers]
    assert all(t["failures"] == 0 for t in tallies), tallies
    assert sum(t["opens"] for t in tallies) > 0
    _check_content(d, {f"p{i}" for i in range(N_BASE)}
                   | {f"w{w}-{j}" for w in range(2) for j in range(15)})


def test_lock_file_is_not_followed(tmp_path):
    """A symlinked index.lock (e.g. pointing at a file elsewhere) is refused, not written."""
    d = tmp_path / "idx"
    _base(d)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (d / mi.LOCK_NAME).unlink()
    (d / mi.LOCK_NAME).symlink_to(target)
    with pytest.raises(MktIndexError, match="lock"):
        Index.open(d).add(["x"], _vec("x")[None])
    assert target.read_text() == "keep"
