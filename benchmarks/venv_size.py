"""Size of the base install: a fresh venv with ``pip install .`` (runtime only, no extras).

    python benchmarks/venv_size.py                    # makes a venv in a temp dir (~2-7 min)
    python benchmarks/venv_size.py --venv /tmp/v      # measure an existing venv instead

Reports the size of ``site-packages`` (what ``du -sh`` says), the same without pip/setuptools
(which every venv gets, whatever is installed), the biggest distributions, mkt's own share
(package + shipped bundle, index, examples), and which installed distributions the runtime's
commands never import (``classify``, ``similar``, ``search``, ``price``, ``dupes``, ``info``
and ``--help`` run in the venv, their ``sys.modules`` mapped to distributions): those are what
the base install carries for nothing. Writes ``benchmarks/results/venv_size.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_OWN = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")


def du_bytes(p: Path) -> int:
    """Disk usage like ``du`` (allocated blocks), not the sum of file sizes."""
    if p.is_symlink():
        return 0
    if p.is_file():
        return p.stat().st_blocks * 512
    return sum(du_bytes(c) for c in p.iterdir()) + p.stat().st_blocks * 512


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages")) or sorted(
        venv.glob("Lib/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no site-packages")
    return found[0]


def top_level_groups(sp: Path) -> dict[str, int]:
    """Bytes per top-level entry, with ``*.dist-info`` / ``*.libs`` folded into their package."""
    out: dict[str, int] = {}
    for c in sp.iterdir():
        name = c.name
        for suf in (".dist-info", ".libs", ".data"):
            if name.endswith(suf):
                name = name[: -len(suf)].split("-")[0]
        name = name.split(".cpython")[0].removesuffix(".py").lower()
        out[name] = out.get(name, 0) + du_bytes(c)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


#: Runs the runtime's commands in-process in the measured venv; prints the distributions whose
#: modules ended up imported by any of them.
_USED = r"""
import importlib.metadata as md, io, json, sys, contextlib
from mkt.cli import main
ex = __import__("mkt.runtime.bundle", fromlist=["x"]).packaged_asset("examples")
photo = str(sorted(ex.glob("*.jpg"))[0])
for argv in (["--help"], ["classify", photo, "--json"], ["classify", photo, "--title", "oak table"],
             ["similar", photo, "-k", "3"], ["search", "pram", "-k", "3"], ["price", photo],
             ["dupes", str(ex)], ["info"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
top = {m.split(".")[0] for m in list(sys.modules)}
dists = md.packages_distributions()
print(json.dumps(sorted({d for t in top for d in dists.get(t, [])})))
"""


def dist_sizes(venv: Path) -> dict[str, float]:
    """MB on disk of each installed distribution (the files its RECORD lists)."""
    code = ("import importlib.metadata as md, json, os\n"
            "out = {}\n"
            "for d in md.distributions():\n"
            "    n = 0\n"
            "    for f in d.files or []:\n"
            "        try:\n"
            "            n += os.stat(d.locate_file(f)).st_blocks * 512\n"
            "        except OSError:\n"
            "            pass\n"
            "    out[d.metadata['Name']] = round(n / 2**20, 2)\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                       text=True)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {}


def used_distributions(venv: Path) -> list[str]:
    r = subprocess.run([str(venv / "bin" / "python"), "-c", _USED], capture_output=True,
                       text=True, cwd=tempfile.gettempdir())
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, help="measure this venv instead of making one")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "venv_size.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mkt-venv-") as tmp:
        venv = args.venv
        if venv is None:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                            str(REPO)], check=True)
        sp = site_packages(venv)
        total = du_bytes(sp)
        groups = top_level_groups(sp)
        own = sum(v for k, v in groups.items() if k in VENV_OWN)
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                                 "--format=freeze"], capture_output=True, text=True).stdout
        used = used_distributions(venv)
        dist_mb = dist_sizes(venv)
    installed = [line.split("==")[0] for line in freeze.split()]
    norm = {u.lower().replace("_", "-") for u in used}
    unused = [d for d in installed if d.lower().replace("_", "-") not in norm
              and d.lower() not in ("pip", "setuptools", "wheel")]
    res = {
        "site_packages_mb": round(total / 2**20, 1),
        "without_pip_setuptools_mb": round((total - own) / 2**20, 1),
        "target_mb": 150,
        "by_package_mb": {k: round(v / 2**20, 1) for k, v in groups.items() if v >= 2**19},
        "mkt_own_mb": round(groups.get("mkt", 0) / 2**20, 1),
        "packages": freeze.split(),
        "imported_by_runtime_commands": used,
        "installed_but_not_imported": unused,
        "installed_but_not_imported_mb": round(sum(dist_mb.get(d, 0.0) for d in unused), 1),
        "dist_mb": dist_mb,
        # no machine paths in committed results
        "venv": "temporary (pip install .)" if args.venv is None else "given (--venv)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
