"""`mkt <command>` builds only the command module it runs (cold start), and still behaves as
the full app: the owner table matches the full app's commands, and `mkt classify` imports
nothing it does not need (no pydantic, rich, torch, other command modules)."""

from __future__ import annotations

import json
import subprocess
import sys

from mkt import cli


def _names(app) -> set[str]:
    import typer.main

    return set(typer.main.get_command(app).commands)


def test_owner_table_matches_the_full_app():
    full = _names(cli.app)
    assert full == set(cli.COMMAND_OWNERS), full ^ set(cli.COMMAND_OWNERS)
    for mod in cli.COMMAND_MODULES:
        mine = {c for c, m in cli.COMMAND_OWNERS.items() if m == mod}
        assert _names(cli.build_app((mod,))) - {"__all__"} == mine, mod


def test_classify_imports_only_what_it_needs(fixture_photos, tmp_path):
    code = (
        "import json, sys\n"
        "from mkt.cli import main\n"
        "try:\n"
        f"    main(['classify', {str(fixture_photos[0])!r}, '--json'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])["category"]
    mods = set(json.loads(lines[-1]))
    for unwanted in ("pydantic", "rich", "torch", "fastapi", "mkt.cli.train", "mkt.cli.serve",
                     "mkt.cli.index", "mkt.cli.market", "mkt.runtime.index"):
        assert unwanted not in mods, unwanted
