"""``mkt info``: the bundle and index in use, and library versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import err_line
from .options import BundleOpt, JsonOpt, command
from .output import console, emit_json, show_kv


def register(app: typer.Typer) -> None:
    command(app, "info")(info_command)


def info_command(
    bundle: BundleOpt = None,
    index: Annotated[Path | None, typer.Option(
        "--index", metavar="DIR", help="Index dir (default: the packaged one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the bundle and index in use, and library versions."""
    import platform
    from importlib import metadata

    from .. import __version__
    from ..runtime.bundle import load_bundle
    from ..runtime.errors import MktError
    from ..runtime.index import Index

    out: dict[str, Any] = {"mkt": __version__, "python": platform.python_version()}
    versions: dict[str, str] = {}
    for dist in ("onnxruntime", "numpy", "pillow", "hnswlib", "typer", "jinja2"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    out["versions"] = versions
    fatal = None
    b = None
    try:
        b = load_bundle(bundle)
        out["bundle"] = b.summary()
    except MktError as e:
        out["bundle"] = {"error": str(e)}
        fatal = fatal or (e if bundle is not None else None)
    try:
        info = Index.open(index).info()
        if b is not None:
            info["matches_bundle"] = info["model_id"] == b.model_id
        out["index"] = info
    except MktError as e:
        out["index"] = {"error": str(e)}
        fatal = fatal or (e if index is not None else None)
    if as_json:
        emit_json(out)
    else:
        con = console()
        con.print(f"mkt {__version__} (python {out['python']}; " + ", ".join(
            f"{k} {v}" for k, v in versions.items()) + ")", markup=False)
        for key in ("bundle", "index"):
            d = dict(out[key])
            d.pop("labels", None)
            show_kv(key, d, con)
        if b is not None:
            con.print("labels: " + " | ".join(b.labels), markup=False)
    if fatal is not None:
        err_line(fatal)  # the same one line as every other command, on stderr
        raise typer.Exit(fatal.exit_code)
