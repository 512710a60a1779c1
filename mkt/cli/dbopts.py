"""Options of the commands that read listings from a database (``mkt index build|sync``,
``mkt data clean``): tables, photos, credentials. Parsing only; the reading is
:func:`mkt.runtime.catalogue.open_source`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import CredentialsOpt

SourceArg = Annotated[str, typer.Argument(
    metavar="SOURCE",
    help="Dataset folder (Products.csv, Images.csv, images/), a folder of photos, a vectors "
         "directory written by `mkt embed` (build only: no second model pass), or a "
         "database URL (postgresql+psycopg://user@host/db, sqlite:///listings.db, "
         "mysql+pymysql://...; password from MKT_DB_PASSWORD or --credentials).")]
ProductsTableOpt = Annotated[str, typer.Option(
    "--products-table", metavar="NAME", help="Database table of listings.")]
ImagesTableOpt = Annotated[str, typer.Option(
    "--images-table", metavar="NAME", help="Database table of photos (id, product_id).")]
PhotosDirOpt = Annotated[Path | None, typer.Option(
    "--photos", metavar="DIR", help="Folder of the database's photos, IMAGE_ID.jpg.")]
PathColumnOpt = Annotated[str | None, typer.Option(
    "--path-column", metavar="COLUMN",
    help="Column of the images table with each photo's path (relative to --photos).")]


def source_options(products_table: str, images_table: str, photos: Path | None,
                   path_column: str | None, credentials: Path | None) -> dict[str, Any]:
    """The keywords of :func:`~mkt.runtime.catalogue.open_source` (warnings printed)."""
    from .errors import warn_line

    return {"products_table": products_table, "images_table": images_table,
            "photos": photos, "path_column": path_column, "credentials": credentials,
            "on_warning": warn_line}


__all__ = ["CredentialsOpt", "ImagesTableOpt", "PathColumnOpt", "PhotosDirOpt",
           "ProductsTableOpt", "SourceArg", "source_options"]
