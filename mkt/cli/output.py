"""How the ``mkt`` commands print: ``--json`` lines on stdout, human lines, one error line a
bad photo, rich tables/progress (imported only when used: rich costs cold start)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from .errors import err_line


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def money(p: Any, none: str = "") -> str:
    return none if p is None else f"£{float(p):,.2f}"


class Reporter:
    """Counts and prints the photos that failed: ``{"path", "error"}`` on stdout with
    ``--json``, else one ``mkt: error:`` line on stderr. :meth:`finish` ends a batch command
    with exit 1 when any failed (after a count line without ``--json``)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.bad = 0

    def error(self, failure: Any) -> None:
        """``failure``: a :class:`~mkt.runtime.batch.PhotoError`."""
        self.bad += 1
        if self.as_json:
            emit_json(failure.to_dict())
        else:
            err_line(failure.error)

    def finish(self, total: int, what: str = "photos") -> None:
        if self.bad:
            if not self.as_json:
                err_line(f"{self.bad} of {total} {what} could not be read")
            raise typer.Exit(1)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    # soft_wrap: one result = one line even when piped (no hard wraps at 80 columns); tables
    # get a wide canvas when piped instead of rich's 80-column default.
    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=160)
    return con


def esc(s: Any) -> str:
    from rich.markup import escape

    return escape(str(s))


def show_kv(title: str, d: dict[str, Any], con: Any) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, v in d.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        t.add_row(esc(key), esc(v))
    con.print(t)


class ProgressBar:
    """A rich progress bar on a terminal; a plain ``mkt: <what> n/N`` line every ~10%
    otherwise (logs, CI). ``update(done, total)`` is a runtime ``progress`` callback."""

    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        con = console(stderr=True)
        self.description = description
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=con,
            disable=not con.is_terminal, transient=False,
        )
        self.task: Any = None
        self.done = 0

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total)
        self.progress.update(self.task, completed=done)
        if self.progress.disable:
            step = max(1, total // 10)
            if done == total or done // step != self.done // step:
                sys.stderr.write(f"mkt: {self.description} {done}/{total}\n")
        self.done = done


def write_html(path: Any, text: str) -> None:
    """Write an ``--html`` page; a page that cannot be written is a fatal error line."""
    from ..runtime.errors import MktError
    from ..runtime.html import write_page

    try:
        write_page(path, text)
    except OSError as e:
        raise MktError(f"{path}: cannot write HTML page ({e.strerror or e})") from None
    sys.stderr.write(f"mkt: wrote {path}\n")


__all__ = ["ProgressBar", "Reporter", "console", "emit_json", "esc", "money", "show_kv",
           "write_html"]
