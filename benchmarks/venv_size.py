"""Size of the base install: a fresh venv with ``pip install .`` (runtime only, no extras).

    python benchmarks/venv_size.py                    # makes a venv in a temp dir (~2-7 min)
    python benchmarks/venv_size.py --venv /tmp/v      # measure an existing venv instead

Reports the size of ``site-packages`` (what ``du -sh`` says), the same without pip/setuptools
(which every venv gets, whatever is installed), and the biggest distributions. Writes
``benchmarks/results/venv_size.json``.
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
    res = {
        "site_packages_mb": round(total / 2**20, 1),
        "without_pip_setuptools_mb": round((total - own) / 2**20, 1),
        "target_mb": 150,
        "by_package_mb": {k: round(v / 2**20, 1) for k, v in groups.items() if v >= 2**19},
        "packages": freeze.split(),
        "venv": "temporary (pip install .)" if args.venv is None else str(args.venv),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
