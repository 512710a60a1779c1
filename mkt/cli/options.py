"""Options shared by the ``mkt`` commands, the command/group classes (plain help without
``<type>`` labels) and the model/index loading every runtime command does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import guarded_invoke, run_main

PhotoArgs = Annotated[
    list[Path], typer.Argument(help="Photo files (JPEG, PNG, WebP, ...).", metavar="PHOTO...")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
BundleOpt = Annotated[
    Path | None,
    typer.Option("--bundle", metavar="DIR", help="Model bundle dir (default: the packaged one)."),
]
IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", metavar="DIR",
                 help="Index dir (default: the packaged catalogue index)."),
]
AnyIndexOpt = Annotated[
    str | None,
    typer.Option("--index", metavar="DIR|URL",
                 help="Index dir, or a shared index in PostgreSQL (postgresql://user@host/db"
                 "[?index=NAME]; password from MKT_DB_PASSWORD or --credentials). Default: "
                 "the packaged catalogue index."),
]
CredentialsOpt = Annotated[
    Path | None,
    typer.Option("--credentials", metavar="FILE.yaml",
                 help="Database credentials YAML (host, port, user, password, database), "
                 "instead of MKT_DB_PASSWORD; never put a password in the URL."),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", metavar="auto|int8|fp32",
                 help="Which model of the bundle runs: auto (the faster on this CPU, measured "
                      "once and cached), int8 or fp32. Default: $MKT_PRECISION or auto."),
]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", metavar="onnxruntime|openvino",
                 help="Inference engine: onnxruntime, or openvino (pip install "
                      "'mkt[openvino]'; faster at batch 32 on some CPUs, slower to start). "
                      "Default: $MKT_BACKEND or onnxruntime."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, metavar="N", help="onnxruntime threads (default: <= 4)."),
]
BatchOpt = Annotated[
    int, typer.Option("--batch", min=1, metavar="N", help="Photos per inference.")
]
PhotosRootOpt = Annotated[
    list[Path] | None,
    typer.Option("--photos-root", metavar="DIR",
                 help="Folder the index was built from, to draw its photos in the page "
                 "(repeatable; default: the source the index recorded, $MKT_PHOTOS_ROOT)."),
]

_TYPE_LABEL = re.compile(r"<([^<>]*)>")


def _plain_label(m: re.Match[str]) -> str:
    """typer's ``<int range>`` / ``<list[Path]>`` / ``<path>`` -> click's ``INTEGER`` / ``PATH``."""
    label = m.group(1).replace(" range", "")
    inner = re.fullmatch(r"list\[(.*)\]", label)
    label = (inner.group(1) if inner else label).lower()
    return {"int": "INTEGER", "str": "TEXT", "bool": "BOOLEAN"}.get(label, label.upper())


_RANGE = re.compile(r"^(?:-?[\d.]+<=?)?x(?:<=?|>=?)-?[\d.]+$")
_EXTRA = re.compile(r"\s*\[([^\[\]]*)\]$")
NBSP = "\u00a0"


def _tidy_help(text: str) -> str:
    """An option's help as shown: click's trailing ``[default: 3; x>=1]`` without the range
    (``x>=1`` is noise; a bad value gets a clear error), and with no-break spaces inside the
    brackets so that a wrapped line never splits them (``[default:`` / ``5]``)."""
    m = _EXTRA.search(text)
    if not m:
        return text
    parts = [x.strip() for x in m.group(1).split(";")]
    parts = [x for x in parts if x and not _RANGE.match(x)]
    head = text[: m.start()]
    if not parts:
        return head
    return head + "  " + f"[{'; '.join(parts)}]".replace(" ", NBSP)


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` (a longer word stays whole), broken at spaces only: never
    inside a word such as ``no-text`` or ``frozen-ImageNet``, never inside the no-break
    spaces of :func:`_tidy_help` (written out as plain spaces)."""
    import textwrap

    lines = textwrap.wrap(re.sub(r"[ \t\r\n]+", " ", text.strip()), max(width, 10),
                          break_on_hyphens=False,
                          break_long_words=False)
    return [line.replace(NBSP, " ") for line in lines] or [""]


def write_dl(formatter: Any, rows: list[tuple[str, str]], col_max: int = 30,
             col_spacing: int = 2) -> None:
    """click's ``HelpFormatter.write_dl`` with :func:`_wrap` (click breaks at hyphens and
    cannot keep ``[default: 5]`` on one line)."""
    if not rows:
        return
    indent = formatter.current_indent
    first_col = min(max(len(r[0]) for r in rows), col_max) + col_spacing
    for first, second in rows:
        formatter.write(f"{'':>{indent}}{first}")
        if not second:
            formatter.write("\n")
            continue
        if len(first) <= first_col - col_spacing:
            formatter.write(" " * (first_col - len(first)))
        else:
            formatter.write("\n" + " " * (first_col + indent))
        lines = _wrap(second, formatter.width - first_col - indent)
        formatter.write(lines[0] + "\n")
        for line in lines[1:]:
            formatter.write(" " * (first_col + indent) + line + "\n")


def _format_params(cmd: Any, ctx: Any, formatter: Any) -> None:
    """Arguments and options as click writes them: ``PHOTO...``, ``--bundle DIR``."""
    args, opts = [], []
    for p in cmd.get_params(ctx):
        rv = p.get_help_record(ctx)
        if rv is None:
            continue
        if p.param_type_name == "argument":
            args.append((p.metavar or (p.name or "").upper(), _tidy_help(rv[1])))
        else:
            opts.append((_TYPE_LABEL.sub(_plain_label, rv[0]), _tidy_help(rv[1])))
    for title, rows in (("Arguments", args), ("Options", opts)):
        if rows:
            with formatter.section(title):
                write_dl(formatter, rows)


class MktCommand(TyperCommand):
    """A command with click's plain help: ``PHOTO...`` / ``--bundle DIR``, no ``<type>``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or (p.name or "").upper()
                if p.nargs != 1 and not name.endswith("..."):
                    name += "..."
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)


class MktGroup(TyperGroup):
    """A command group run under the one error guard (:mod:`mkt.cli.errors`): usage errors
    are one ``mkt: error:`` line and exit 2; plain help like :class:`MktCommand`."""

    def invoke(self, ctx: Any) -> Any:
        return guarded_invoke(super().invoke, ctx)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        run_main(super().main, *args, **kwargs)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The commands with their whole first sentence, wrapped (click cuts it with
        ``...`` at the terminal width)."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, first_sentence(cmd.short_help or cmd.help or "")))
        if rows:
            with formatter.section("Commands"):
                write_dl(formatter, rows)


def first_sentence(text: str) -> str:
    """The first sentence of a help text's first paragraph (all of it when it has one)."""
    para = " ".join(text.strip().split("\n\n", 1)[0].split())
    m = re.search(r"(?<=[.!?])\s+(?=[A-Z`(])", para)
    return para[: m.start()] if m else para


def new_app(**kwargs: Any) -> typer.Typer:
    """A typer app (or sub-app) with mkt's settings: plain help, the error guard."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(cls=MktGroup, rich_markup_mode=None, pretty_exceptions_enable=False,
                       add_completion=False,
                       context_settings={"help_option_names": ["-h", "--help"]}, **kwargs)


def command(app: typer.Typer, name: str, **kwargs: Any) -> Any:
    """``@command(app, "name")``: register a command with :class:`MktCommand`."""
    return app.command(name, cls=MktCommand, **kwargs)


def load_model(bundle: Path | None, threads: int | None = None,
               precision: str | None = None, backend: str | None = None) -> Any:
    from ..runtime.model import Model

    return Model(bundle, threads=threads, variant=precision, backend=backend)


def open_index(index: str | Path | None, model: Any = None, ef: int | None = None,
               credentials: Path | None = None) -> Any:
    """Open ``index`` (default: the packaged one; a ``postgresql://`` URL: the shared
    pgvector index), refusing one of another model."""
    from ..runtime.dburl import is_db_url

    model_id = None if model is None else model.model_id
    if index is not None and is_db_url(index):
        from ..runtime.pgindex import PgIndex

        idx = PgIndex.open(str(index), credentials=credentials, model_id=model_id)
    else:
        from ..runtime.index import Index

        idx = Index.open(None if index is None else Path(index), model_id=model_id)
    if ef:
        idx.set_ef(ef)
    return idx


__all__ = [
    "AnyIndexOpt",
    "BatchOpt",
    "CredentialsOpt",
    "BundleOpt",
    "IndexOpt",
    "JsonOpt",
    "MktCommand",
    "MktGroup",
    "PhotoArgs",
    "PhotosRootOpt",
    "PrecisionOpt",
    "BackendOpt",
    "ThreadsOpt",
    "command",
    "load_model",
    "new_app",
    "open_index",
]
