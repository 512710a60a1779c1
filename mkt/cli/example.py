"""``mkt example``: the example photos that ship with the package, so that the README's
commands work for an installed user too (not only inside a checkout)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail
from .options import command

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def register(app: typer.Typer) -> None:
    command(app, "example")(example_command)


def examples_dir() -> Path:
    """``mkt/assets/examples`` of the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "examples"


def example_photos() -> list[Path]:
    """The packaged example photos, sorted by name (empty if the folder is missing)."""
    d = examples_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def example_command(
    name: Annotated[str | None, typer.Argument(
        metavar="[NAME]", help="An example photo, e.g. home_garden (with or without .jpg). "
        "Without it: every example photo.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="DIR", help="Copy the photo(s) into this folder (made if "
        "needed) and print the copies' paths.")] = None,
) -> None:
    """List the packaged example photos, print one's path, or copy them with --out DIR.

    Try: mkt example --out . && mkt classify home_garden.jpg
    """
    photos = example_photos()
    if not photos:
        fail(f"{examples_dir()}: no example photos in this installation")
    if name is not None:
        wanted = Path(name).name
        chosen = [p for p in photos if wanted in (p.name, p.stem)]
        if not chosen:
            fail(f"no example photo {name!r}; there are: "
                 + ", ".join(p.stem for p in photos))
        photos = chosen
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            copies = [Path(shutil.copyfile(p, out / p.name)) for p in photos]
        except OSError as e:
            fail(f"{out}: cannot copy the example photos ({e.strerror or e})")
        for c in copies:
            sys.stdout.write(f"{c}\n")
        return
    for p in photos:
        sys.stdout.write(f"{p}\n")
