"""Shared helpers of the CLI tests (to fold into conftest.py): run ``mkt`` in-process, parse
``--json`` lines, build a small index of the fixture dataset.

- ``run(*args)``: typer's CliRunner on :data:`mkt.cli.app`; asserts there is never a
  traceback and nothing but ``SystemExit`` escapes. ``res.stdout`` / ``res.stderr`` apart.
- ``jlines(text)``: the JSON objects, one a line.
- ``build_index(tmp_path_factory, bundle, dataset, *extra)``: ``mkt index build`` of the
  fixture dataset into a fresh folder; returns the index dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mkt.cli import app

runner = CliRunner()


def run(*args: Any) -> Any:
    res = runner.invoke(app, [str(a) for a in args])
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def jlines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_index(tmp_path_factory: Any, bundle: Path, dataset: Path, *extra: Any) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    res = run("index", "build", dataset, "--out", out, "--bundle", bundle, *extra)
    assert res.exit_code == 0, res.output
    return out
