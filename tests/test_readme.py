"""The README's examples do what it says, for someone who installed the package: its Python
example and its quick-start commands, taken from README.md itself, run on the installed
``mkt`` from an empty folder (not the checkout). Also: the README's claims that are easy to
let drift (price rule and k, the test command vs ``.ci/run``).

CLI examples are the lines ``$ mkt ...`` of the ```` ```bash ```` blocks, run in order in one
folder with bash. ``mkt serve`` and ``mkt bench`` lines are not run here (a server, minutes of
timing); they have their own tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)  # top-level blocks only
NOT_RUN = ("mkt serve", "mkt bench")


def blocks(lang: str) -> list[str]:
    return [body for info, body in FENCE.findall(README) if info == lang]


def cli_examples() -> list[str]:
    return [line[2:].strip() for body in blocks("bash") for line in body.splitlines()
            if line.startswith("$ mkt ")]


def _env() -> dict[str, str]:
    """The installed package as a user has it: this interpreter's bin first on PATH (its
    ``mkt`` and ``python``), no PYTHONPATH pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MKT_DEBUG")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "120"
    return env


def _mkt_installed() -> bool:
    return shutil.which("mkt", path=_env()["PATH"]) is not None


needs_mkt = pytest.mark.skipif(not _mkt_installed(),
                               reason="no `mkt` script beside this python (not pip-installed)")


@pytest.fixture(scope="module")
def newcomer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("newcomer")
    assert not (d / "mkt").exists() and REPO not in d.parents
    return d


def test_readme_has_examples():
    cmds = cli_examples()
    assert len(cmds) >= 5
    for word in ("example", "classify", "similar", "price", "dupes", "info"):
        assert any(c.split()[1] == word for c in cmds), word
    assert blocks("python")
    for c in cmds:  # an installed user has no checkout: no repo-relative paths
        assert "mkt/assets" not in c and "tests/" not in c, c


@needs_mkt
@pytest.mark.parametrize("cmd", [c for c in cli_examples() if not c.startswith(NOT_RUN)])
def test_readme_cli_example(cmd, newcomer_dir):
    """In README order, in one empty folder (``mkt example --out .`` comes first)."""
    p = subprocess.run(["bash", "-c", cmd], cwd=newcomer_dir, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, f"$ {cmd}\n{p.stdout}\n{p.stderr}"
    assert p.stdout.strip(), f"$ {cmd}: printed nothing"
    assert "Traceback" not in p.stdout + p.stderr
    for line in p.stderr.splitlines():
        assert line.startswith("mkt: "), f"$ {cmd}: stray stderr line {line!r}"


@needs_mkt
@pytest.mark.parametrize("n", range(len(blocks("python"))))
def test_readme_python_example(n, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(blocks("python")[n], encoding="utf-8")
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout.splitlines()
    assert out and "Traceback" not in p.stderr
    if n == 0:  # the API tour: a category with a probability, then "True <index size>"
        cat, _, pct = out[0].rpartition(" ")
        assert cat and re.fullmatch(r"\d+\.\d%", pct), out[0]
        flag, count = out[-1].split()
        assert flag == "True" and int(count) > 0, out[-1]


def test_readme_price_rule_matches_the_code():
    from mkt.runtime import price as P

    row = next(line for line in README.splitlines() if line.startswith("| `mkt price"))
    assert f"-k {P.DEFAULT_K}" in row and "weighted mean of the log prices" in row
    assert P.DEFAULT_STATISTIC == "mean" and "median" not in row


def test_readme_commands_table_lists_the_runtime_commands():
    table = [line for line in README.splitlines() if line.startswith("| `mkt ")]
    for name in ("classify", "similar", "price", "dupes", "index", "example", "info", "bench",
                 "serve"):
        assert any(line.startswith(f"| `mkt {name}") for line in table), name


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q '.[train,serve,sql,scale,openvino,dev]'" in ci
    assert "pip install '.[train,serve,sql,scale,openvino,dev]'\npython -m pytest -q" in README
    assert "python -m pytest -q" in ci
    # what CI adds is said in the README
    for extra in ("--upgrade pip", "ruff check mkt tests benchmarks", "no:cacheprovider",
                  "TORCH_INDEX_URL"):
        assert extra in ci and extra in README, extra
    assert "exactly what `.ci/run` does" not in README


def test_readme_says_how_to_get_cpu_torch():
    assert "--index-url https://download.pytorch.org/whl/cpu" in README
    assert "2.7 GB" in README
