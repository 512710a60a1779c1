"""The runtime never needs torch: import checks, and (slow) a clean venv without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "torchvision", "pandas", "mkt.training", "mkt.export")

CHECK = """
import sys
{body}
bad = [m for m in {forbidden!r} if m in sys.modules]
assert not bad, bad
print("ok")
"""


def _run_py(body: str, python: str = sys.executable, env=None, cwd: Path = REPO):
    code = CHECK.format(body=body, forbidden=FORBIDDEN)
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(cwd), env=env)


def test_import_runtime_and_cli_without_torch():
    body = (
        "import mkt, mkt.cli, mkt.runtime\n"
        "import mkt.runtime.images, mkt.runtime.bundle, mkt.runtime.model\n"
        "import mkt.runtime.index, mkt.runtime.catalogue\n"
    )
    p = _run_py(body)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_import_mkt_is_lazy():
    # cold start: `import mkt` / `mkt.cli` must not drag in onnxruntime or hnswlib
    p = _run_py("import mkt, mkt.cli\n"
                "assert 'onnxruntime' not in sys.modules and 'hnswlib' not in sys.modules")
    assert p.returncode == 0, p.stderr


def test_runtime_commands_do_not_import_torch(bundle_dir, fixture_photos, tmp_path):
    body = (
        "from mkt.cli import main\n"
        "for argv in ({a!r}, {b!r}, {c!r}):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (argv, e.code)\n"
    ).format(
        a=["classify", str(fixture_photos[0]), "--bundle", str(bundle_dir), "--json"],
        b=["index", "build", str(fixture_photos[0].parent), "--out", str(tmp_path / "i"),
           "--bundle", str(bundle_dir)],
        c=["similar", str(fixture_photos[0]), "--index", str(tmp_path / "i"), "--bundle",
           str(bundle_dir), "--json"],
    )
    p = _run_py(body)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr


@pytest.mark.slow
def test_clean_venv_without_torch(tmp_path, bundle_dir):
    """pip install the project (not editable: proves package data ships) into a fresh venv
    that cannot see the dev environment's torch, then use it."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    readme = REPO / "README.md"
    if readme.is_file():
        shutil.copy2(readme, src)
    else:
        (src / "README.md").write_text("mkt\n")
    shutil.copytree(REPO / "mkt", src / "mkt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    py = str(bindir / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          str(src)], capture_output=True, text=True, timeout=1200, env=env)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    p = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path))
    assert p.returncode != 0  # really torch-free

    mkt = str(bindir / "mkt")
    p = subprocess.run([mkt, "--help"], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path), timeout=120)
    assert p.returncode == 0 and "classify" in p.stdout, p.stderr

    # package data shipped: the example photos (and the bundle, when one is packaged)
    p = subprocess.run([py, "-c", "import mkt, pathlib; print(pathlib.Path(mkt.__file__)"
                        ".parent / 'assets')"], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path))
    assets = Path(p.stdout.strip())
    assert str(assets).startswith(str(env_dir))
    examples = sorted((assets / "examples").glob("*.jpg"))
    assert len(examples) >= 3
    args = [mkt, "classify", str(examples[0]), "--json"]
    if not (assets / "bundle" / "manifest.json").is_file():
        args += ["--bundle", str(bundle_dir)]
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                       timeout=120)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["path"] == str(examples[0]) and row["category"]

    body = f"import mkt.runtime, mkt.cli\nassert mkt.cli.__file__.startswith({str(env_dir)!r})"
    p = _run_py(body, python=py, env=env, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
