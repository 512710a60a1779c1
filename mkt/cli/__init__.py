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
from collections.abc import Sequence

from .options import new_app

#: The command modules, in the order their commands are listed.
COMMAND_MODULES = (
    "photos", "search", "market", "index", "embed", "info", "example", "bench", "serve",
    "train", "export",
)

app = new_app(
    name="mkt",
    help="Classify second-hand marketplace photos into 13 categories and find similar listings.",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f".{_name}", __name__).register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the app; exits 0/1/2 (see :mod:`mkt.cli.errors`)."""
    app(args=list(argv) if argv is not None else None, prog_name="mkt")


__all__ = ["COMMAND_MODULES", "app", "main"]
