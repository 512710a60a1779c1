"""``--near PLACE`` / ``--within DISTANCE`` of ``mkt similar`` and ``mkt search``: parsing
only; the ranking is :func:`mkt.runtime.location.rank_by_distance`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

NearOpt = Annotated[str | None, typer.Option(
    "--near", metavar="PLACE",
    help='Rank by distance too: "Leeds", "Leeds, West Yorkshire" or "53.80,-1.55". Results '
         "carry location and distance_km; order: score * exp(-km / 50).")]
WithinOpt = Annotated[str | None, typer.Option(
    "--within", metavar="DISTANCE",
    help="With --near: only listings at most this far (30km, 20mi), k of them when they "
         "exist.")]


def near_options(near: str | None, within: str | None) -> tuple[Any, float | None]:
    """``(Place or None, km or None)``; one-line errors for an unknown place or a bad
    distance."""
    from ..runtime.errors import MktError
    from ..runtime.location import parse_near, parse_within

    if near is None:
        if within is not None:
            raise MktError("--within needs --near PLACE")
        return None, None
    return parse_near(near), parse_within(within)


__all__ = ["NearOpt", "WithinOpt", "near_options"]
