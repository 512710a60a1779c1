"""The one error guard of the ``mkt`` command line.

Every command runs inside :class:`MktGroup`: an :class:`~mkt.runtime.errors.MktError` becomes
one ``mkt: error: ...`` line and its exit code, a usage error one such line and exit 2, a
broken pipe (``mkt ... | head``) a quiet exit 1, anything unexpected one line and exit 2 (set
``MKT_DEBUG=1`` for the traceback). Exit codes: 0 ok, 1 some photos failed (the rest done),
2 usage or fatal error.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import typer

from ..runtime.errors import MktError


class MissingExtraError(MktError):
    """A command needs an optional extra (``mkt[serve]``, ``mkt[train]``) that is missing."""


def err_line(msg: Any) -> None:
    sys.stderr.write(f"mkt: error: {' '.join(str(msg).split())}\n")
    sys.stderr.flush()


def warn_line(msg: Any) -> None:
    sys.stderr.write(f"mkt: warning: {' '.join(str(msg).split())}\n")
    sys.stderr.flush()


def fail(msg: str, code: int = 2) -> NoReturn:
    """Stop the command with one error line and exit ``code``."""
    err = MktError(msg)
    err.exit_code = code
    raise err


def require_extra(extra: str, command: str, *modules: str) -> None:
    """Fail with exit 2 and ``pip install 'mkt[extra]'`` unless every module imports."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise MissingExtraError(
                f"`mkt {command}` needs the {extra} extra ({e.name or name} is missing): "
                f"pip install 'mkt[{extra}]'") from None


def quiet_broken_pipe() -> None:
    """`mkt ... | head`: stop writing without a second error at interpreter exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _is_click_error(e: BaseException) -> bool:
    """click's own exceptions (usage errors, bad parameters), whichever click typer uses."""
    return hasattr(e, "format_message") and hasattr(e, "exit_code") and hasattr(e, "show")


def guarded_invoke(invoke: Any, ctx: Any) -> Any:
    """Run a command: MktError / unexpected exceptions -> one line + exit code."""
    try:
        return invoke(ctx)
    except (typer.Exit, typer.Abort):
        raise
    except MktError as e:
        err_line(e)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err_line("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        quiet_broken_pipe()
        raise typer.Exit(1) from None
    except Exception as e:
        if _is_click_error(e) or os.environ.get("MKT_DEBUG"):
            raise
        if isinstance(e, OSError):  # e.g. an output file that cannot be written
            err_line(f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}")
        else:
            err_line(f"unexpected {type(e).__name__}: {e} (MKT_DEBUG=1 for a traceback)")
        raise typer.Exit(2) from None


def run_main(main: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """Run a click ``main`` non-standalone; a usage error -> one line and exit 2, and
    ``sys.exit`` with the command's exit code (0 when it returns)."""
    try:
        rv = main(*args, standalone_mode=False, **kwargs)
    except typer.Abort:
        err_line("aborted")
        sys.exit(1)
    except Exception as e:
        if not _is_click_error(e):
            raise
        code = int(getattr(e, "exit_code", 2))
        if type(e).__name__ == "NoArgsIsHelpError":  # `mkt index`: its help, exit 2
            e.show()  # type: ignore[attr-defined]
            sys.exit(code)
        ctx, cmd = getattr(e, "ctx", None), getattr(e, "cmd", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and cmd else ""
        msg = e.format_message()  # type: ignore[attr-defined]
        if hint and msg.endswith(".") and not msg.endswith("..."):
            msg = msg[:-1]  # "Missing argument 'PHOTO...' (see ...)", not "...'. (see"
        err_line(msg + hint)
        sys.exit(code)
    sys.exit(rv if isinstance(rv, int) else 0)


__all__ = [
    "MissingExtraError",
    "err_line",
    "fail",
    "guarded_invoke",
    "quiet_broken_pipe",
    "require_extra",
    "run_main",
    "warn_line",
]
