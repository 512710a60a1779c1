"""The ``mkt`` command line (typer). Entry point: ``mkt.cli:main``.

One module a command group, each with a ``register(app)`` that adds its commands:

- :mod:`.photos`: ``classify``, ``similar``; :mod:`.search`: ``search``;
  :mod:`.index`: ``index build|add|remove|info|push``;
  :mod:`.embed`: ``embed`` (batch embedding to Parquet, local or Ray: ``scale`` extra);
  :mod:`.info`: ``info``; :mod:`.example`: ``example`` (the packaged example photos);
  :mod:`.market`: ``price``, ``dupes``; :mod:`.bench`: ``bench``;
  :mod:`.serve`: ``serve`` (``serve`` extra); :mod:`.train`: ``data``, ``train``,
  ``evaluate`` and :mod:`.export`: ``export`` (``train`` extra).
- shared: :mod:`.options` (option types, command classes, model/index loading),
  :mod:`.output` (JSON lines, error reporting, tables, progress), :mod:`.errors` (the one
  error guard).

To add a command group, write ``mkt/cli/<name>.py`` with ``register(app)`` and add its name to
:data:`COMMAND_MODULES`. Command modules import only typer and the standard library at module
level (numpy, onnxruntime, torch, fastapi load inside the commands), so every command is
always listed and ``mkt --help`` stays fast and torch-free; a command whose extra is missing
fails with exit 2 and ``pip install 'mkt[...]'``.

Conventions: ``--json`` prints one JSON object per line on stdout. A bad photo gives one error
line (stderr, or ``{"path", "error"}`` on stdout with ``--json``) and the others carry on;
exit code 1 for such partial failures, 2 for fatal/usage errors. Never a traceback (set
``MKT_DEBUG=1`` to get one).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .options import new_app

#: The command modules, in the order their commands are listed.
COMMAND_MODULES = (
    "photos", "search", "market", "index", "embed", "info", "example", "bench", "serve",
    "train", "export",
)

#: Which module registers each top-level command: ``mkt classify ...`` builds only the photos
#: module's commands (typer turns every registered command into a click command, options and
#: type hints included, before it runs one; all of them cost a cold start ~2x the one it
#: runs). tests/test_cli_lazy.py checks this table against the full app.
COMMAND_OWNERS = {
    "classify": "photos", "similar": "photos", "search": "search", "price": "market",
    "dupes": "market", "index": "index", "embed": "embed", "info": "info", "example": "example",
    "bench": "bench", "serve": "serve", "data": "train", "train": "train",
    "evaluate": "train", "export": "export",
}

_HELP = "Classify second-hand marketplace photos into 13 categories and find similar listings."
_app: Any = None


def build_app(modules: Sequence[str] = COMMAND_MODULES) -> Any:
    """The ``mkt`` typer app with the commands of ``modules`` (default: all of them)."""
    a = new_app(name="mkt", help=_HELP)
    for name in modules:
        importlib.import_module(f".{name}", __name__).register(a)
    if len(modules) < len(COMMAND_MODULES):
        # a group, never typer's single-command mode (``mkt search q`` must stay a subcommand)
        a.command("__all__", hidden=True)(lambda: None)
    return a


def __getattr__(name: str) -> Any:
    """``mkt.cli.app``: the full app, built on first use (tests, ``--help``)."""
    global _app
    if name == "app":
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the app; exits 0/1/2 (see :mod:`mkt.cli.errors`)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    owner = COMMAND_OWNERS.get(args[0]) if args else None
    a = build_app((owner,)) if owner is not None and _app is None else __getattr__("app")
    a(args=args, prog_name="mkt")


__all__ = ["COMMAND_MODULES", "COMMAND_OWNERS", "app", "build_app", "main"]
