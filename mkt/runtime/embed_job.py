"""Batch embedding to Parquet vector shards (``mkt embed``), on this machine or on Ray.

Why: embedding is the expensive step of indexing (about 90% of ``mkt index build``). Doing it
once, as a job that writes plain Parquet, lets it run on many machines (Ray Data), lets
``mkt index build VECTORS_DIR`` and ``mkt index push`` reuse the vectors without a model
pass, and leaves a record of what failed.

A vectors directory holds ``*.parquet`` shards and ``_manifest.json`` (written last: a
directory without it is not a finished job). One row a photo: ``id, product_id, path``, the
listing fields when known (``title, price, category, location, description``),
``embedding`` (fixed-size list of float32, L2-normalised, the model's photo space),
``text_embedding`` (the photo in the text encoder's space, bundles trained with text),
``model_id`` and ``error`` (null for a good row; a bad photo is an error row with null
vectors, never a failed job). Both engines run the same function on each batch
(:func:`embed_rows`), so the vectors are the same for the same photos.

Sources: what ``mkt index build`` takes (photo folder, dataset folder, through
:func:`mkt.runtime.catalogue.iter_source`) or a photo list, ``.parquet``/``.csv`` with a
``path`` column (and optional ``id``, ``product_id`` and listing fields), local or any URI
pyarrow's filesystems open (``s3://``, ``gs://``, ``hdfs://``, ``file://``); relative paths are
relative to the list's folder. pyarrow and ray are imported only here, lazily: without them
the error says ``pip install 'mkt[scale]'``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch import DEFAULT_BATCH, PhotoError, iter_batches
from .errors import CatalogueError, MktError, MktIndexError

MANIFEST = "_manifest.json"
FORMAT = "mkt-vectors/1"
LISTING_FIELDS = ("title", "price", "category", "location", "description")
#: rows per Parquet shard written by the local engine
SHARD_ROWS = 50_000
#: errors listed one by one in the manifest (the count is always complete)
MAX_LISTED_ERRORS = 1000


class ScaleExtraError(MktError):
    """pyarrow / ray (the ``scale`` extra) is not installed."""


def need(module: str) -> Any:
    """Import ``module`` of the ``scale`` extra, or fail with the one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScaleExtraError(f"{module} is missing: this needs the 'scale' extra: "
                              "pip install 'mkt[scale]'") from None


def is_vectors_dir(path: str | os.PathLike) -> bool:
    """A finished ``mkt embed`` output (has its manifest)."""
    return (Path(path) / MANIFEST).is_file()


def is_photo_list(source: str | os.PathLike) -> bool:
    """A Parquet or CSV file listing photos (local path or URI)."""
    return str(source).lower().endswith((".parquet", ".csv"))


def _fs_and_path(uri: str) -> tuple[Any, str]:
    pafs = need("pyarrow.fs")
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad URIs
            raise CatalogueError(f"{uri}: cannot open ({e})") from None
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_photo_list(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows ``{id, path, product_id, title, ...}`` of a Parquet/CSV photo list."""
    pq = need("pyarrow.parquet")
    pacsv = need("pyarrow.csv")
    src = os.fspath(source)
    fs, p = _fs_and_path(src)
    try:
        if src.lower().endswith(".parquet"):
            table = pq.read_table(p, filesystem=fs)
        else:
            with fs.open_input_stream(p) as f:
                table = pacsv.read_csv(f)
    except FileNotFoundError:
        raise CatalogueError(f"{src}: no such file") from None
    except Exception as e:  # ArrowInvalid and friends: a malformed list
        raise CatalogueError(f"{src}: cannot read the photo list ({e})") from None
    if "path" not in table.column_names:
        raise CatalogueError(f"{src}: needs a 'path' column (has {table.column_names})")
    base = src.rsplit("/", 1)[0] if "://" in src else str(Path(p).parent)
    return [normalise_row(r, base) for r in table.to_pylist()]


def normalise_row(r: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    """A photo-list row with the job's columns: ``path`` made absolute against ``base``,
    ``id`` defaulting to the file stem, strings for ids, missing listing fields None."""
    path = "" if r.get("path") is None else str(r["path"])
    if base and path and "://" not in path and not os.path.isabs(path):
        path = f"{base}/{path}" if "://" in base else os.path.join(base, path)
    pid = r.get("product_id")
    rid = r.get("id")
    out = {"id": str(rid) if rid not in (None, "") else Path(path.rsplit("/", 1)[-1]).stem,
           "path": path, "product_id": None if pid in (None, "") else str(pid)}
    for k in LISTING_FIELDS:
        v = r.get(k)
        out[k] = None if v in (None, "") else v
    if out["price"] is not None:
        try:
            out["price"] = float(out["price"])
        except (TypeError, ValueError):
            out["price"] = None
    return out


def source_rows(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Every photo of ``source`` as job rows: a photo list, or whatever
    :func:`~mkt.runtime.catalogue.iter_source` reads (folder, dataset folder)."""
    if is_photo_list(source):
        return read_photo_list(source)
    from .catalogue import iter_source

    rows = []
    for it in iter_source(source):
        r = {"id": it.id, "path": str(it.path), "product_id": it.product_id}
        r.update({k: getattr(it, k) for k in LISTING_FIELDS})
        rows.append(r)
    return rows


def _read_bytes(path: str) -> bytes:
    fs, p = _fs_and_path(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except Exception as e:
        raise MktError(f"{path}: cannot read ({e})") from None


def schema(dim: int, text_dim: int | None) -> Any:
    """The shards' Arrow schema (``text_embedding`` only for bundles trained with text)."""
    pa = need("pyarrow")
    fields = [pa.field("id", pa.string()), pa.field("product_id", pa.string()),
              pa.field("path", pa.string()), pa.field("title", pa.string()),
              pa.field("price", pa.float64()), pa.field("category", pa.string()),
              pa.field("location", pa.string()), pa.field("description", pa.string()),
              pa.field("embedding", pa.list_(pa.float32(), dim))]
    if text_dim:
        fields.append(pa.field("text_embedding", pa.list_(pa.float32(), text_dim)))
    fields += [pa.field("model_id", pa.string()), pa.field("error", pa.string())]
    return pa.schema(fields)


def _text_dim(model: Any) -> int | None:
    if not getattr(model, "has_text_embedding", False):
        return None
    out = model.session.get_outputs()
    for o in out:
        if o.name == model.text_embedding_name:
            return int(o.shape[-1])
    return None


def embed_rows(model: Any, rows: Sequence[dict[str, Any]],
               batch_size: int = DEFAULT_BATCH) -> Any:
    """Embed job rows with ``model``: a ``pyarrow.Table`` (:func:`schema`) with one row per
    input row, error rows included. The one function both engines run on every batch."""
    pa = need("pyarrow")
    sources: list[Any] = []
    pre_errors: dict[int, str] = {}
    for i, r in enumerate(rows):
        p = r["path"]
        if "://" in p and not p.startswith("file://"):
            try:
                sources.append(_read_bytes(p))
            except MktError as e:
                sources.append(b"")
                pre_errors[i] = str(e)
        else:
            sources.append(p[len("file://"):] if p.startswith("file://") else p)
    dim, tdim = model.embedding_dim, _text_dim(model)
    emb: list[Any] = [None] * len(rows)
    temb: list[Any] = [None] * len(rows)
    err: list[str | None] = [None] * len(rows)
    names = [r["path"] for r in rows]
    for batch in iter_batches(sources, model, batch_size, names=names):
        for bi in batch.bad:
            err[bi.index] = pre_errors.get(bi.index, str(bi.error))
        good = batch.good
        if good:
            out = model.run(batch.arrays())
            for j, bi in enumerate(good):
                emb[bi.index] = out["embedding"][j]
                if tdim:
                    temb[bi.index] = out["text_embedding"][j]
    cols: dict[str, Any] = {k: [r.get(k) for r in rows]
                            for k in ("id", "product_id", "path", *LISTING_FIELDS)}
    cols["embedding"] = _fixed_list(pa, emb, dim)
    if tdim:
        cols["text_embedding"] = _fixed_list(pa, temb, tdim)
    cols["model_id"] = [model.model_id] * len(rows)
    cols["error"] = err
    return pa.table(cols, schema=schema(dim, tdim))


def _fixed_list(pa: Any, vecs: list[Any], dim: int) -> Any:
    """A fixed-size list<float32> column, null where a vector is None."""
    flat = np.zeros((len(vecs), dim), np.float32)
    mask = np.array([v is None for v in vecs], bool)
    for i, v in enumerate(vecs):
        if v is not None:
            flat[i] = v
    values = pa.array(flat.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim,
                                             mask=pa.array(mask) if mask.any() else None)


@dataclass
class EmbedReport:
    """What an embed job did: where, how many good rows, the failures, the manifest."""

    out: Path
    count: int
    errors: list[PhotoError] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (overwrite and is_vectors_dir(out)):
            what = "a vectors directory" if is_vectors_dir(out) else "a non-empty directory"
            hint = " (use --force)" if is_vectors_dir(out) else ""
            raise MktError(f"{out}: already {what}{hint}")
        for p in out.iterdir():
            if p.suffix == ".parquet" or p.name == MANIFEST:
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _dedupe(rows: list[dict[str, Any]], errors: list[PhotoError]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["id"] in seen:
            errors.append(PhotoError(r["path"],
                                     f"{r['path']}: duplicate photo id '{r['id']}', skipped"))
            continue
        seen.add(r["id"])
        out.append(r)
    return out


def run_embed_job(
    model: Any,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    address: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    actors: int | None = None,
    threads_per_actor: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed every photo of ``source`` into Parquet shards under ``out``.

    ``engine="local"``: this process, ``model`` as loaded. ``engine="ray"``: Ray Data,
    ``map_batches`` over an actor pool, one onnxruntime session an actor (the same bundle
    and precision as ``model``); ``address`` joins a cluster (``ray://...`` or ``auto``),
    else a local Ray starts. Bad photos become error rows; the job never fails for them.
    """
    pq = need("pyarrow.parquet")
    out = Path(out)
    if engine not in ("local", "ray"):
        raise MktError(f"unknown engine {engine!r}; use local or ray")
    _prepare_out(out, overwrite)
    t0 = time.perf_counter()
    errors: list[PhotoError] = []
    if engine == "ray" and is_photo_list(source):
        # Ray Data reads the list itself (no row passes through this process)
        base = _check_list(source)
        _run_ray(model, source, out, address=address, batch_size=batch_size, actors=actors,
                 threads=threads_per_actor, base=base)
        return _finish(model, source, out, engine, errors, time.perf_counter() - t0)
    rows = _dedupe(source_rows(source), errors)
    if not rows:
        raise MktError(f"{source}: no photos found")
    if engine == "local":
        done = 0
        for s in range(0, len(rows), SHARD_ROWS):
            chunk = rows[s:s + SHARD_ROWS]
            table = embed_rows(model, chunk, batch_size)
            tmp = out / f".part-{s // SHARD_ROWS:05d}.parquet.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, out / f"part-{s // SHARD_ROWS:05d}.parquet")
            done += len(chunk)
            if progress:
                progress(done, len(rows))
    else:
        _run_ray(model, rows, out, address=address, batch_size=batch_size, actors=actors,
                 threads=threads_per_actor)
    return _finish(model, source, out, engine, errors, time.perf_counter() - t0)


class _EmbedActor:
    """One Ray actor: one onnxruntime session of the bundle, ``threads`` intra-op threads."""

    def __init__(self, bundle: str, variant: str, threads: int, batch_size: int,
                 base: str | None = None) -> None:
        from .model import Model

        self.model = Model(bundle, variant=variant, threads=threads)
        self.batch_size = batch_size
        self.base = base  # set when the rows come raw from a photo list

    def __call__(self, batch: Any) -> Any:
        rows = batch.to_pylist()
        if self.base is not None:
            rows = [normalise_row(r, self.base) for r in rows]
        return embed_rows(self.model, rows, self.batch_size)


def _check_list(source: str | os.PathLike) -> str:
    """A photo list's columns checked from its schema / first block only; returns the folder
    relative paths are relative to."""
    pq, pacsv = need("pyarrow.parquet"), need("pyarrow.csv")
    src = os.fspath(source)
    fs, p = _fs_and_path(src)
    try:
        if src.lower().endswith(".parquet"):
            names = pq.read_schema(p, filesystem=fs).names
        else:
            with fs.open_input_stream(p) as f:
                names = pacsv.open_csv(f).schema.names
    except FileNotFoundError:
        raise CatalogueError(f"{src}: no such file") from None
    except Exception as e:
        raise CatalogueError(f"{src}: cannot read the photo list ({e})") from None
    if "path" not in names:
        raise CatalogueError(f"{src}: needs a 'path' column (has {names})")
    return src.rsplit("/", 1)[0] if "://" in src else str(Path(p).parent)


def _run_ray(model: Any, rows: list[dict[str, Any]] | str | os.PathLike, out: Path, *,
             address: str | None, batch_size: int, actors: int | None, threads: int | None,
             base: str | None = None) -> None:
    """``rows``: job rows, or a photo list's path/URI that Ray Data reads (then ``base``)."""
    ray = need("ray")
    need("ray.data")
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        except Exception as e:  # ConnectionError, RuntimeError: no cluster at that address
            raise MktError(f"ray: cannot start or join a cluster at "
                           f"{address or 'local'} ({e})") from None
        started = True
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # mkt reports progress itself
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = max(1, threads or 1)
        # the read and write tasks need a CPU too: an actor pool holding every CPU starves
        # them (the job hangs), so by default one CPU stays free for them
        actors = max(1, actors or (cpus - 1) // threads)
        if isinstance(rows, list):
            # blocks of a few batches, so that every actor gets work even on small inputs
            blocks = max(actors, -(-len(rows) // (batch_size * 4)))
            ds = ray.data.from_items(rows, override_num_blocks=min(blocks, len(rows)))
        else:
            src = os.fspath(rows)
            read = ray.data.read_parquet if src.lower().endswith(".parquet") \
                else ray.data.read_csv
            ds = read(src if "://" in src else os.path.abspath(src))
        ds = ds.map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"bundle": str(model.bundle.path), "variant": model.variant,
                                   "threads": threads, "batch_size": batch_size,
                                   "base": base},
            batch_size=batch_size * 4, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads)
        ds.write_parquet(str(out))
    finally:
        if started:
            ray.shutdown()


def _shown(source: Any) -> str:
    """The source as recorded: a database URL without its password."""
    from .dburl import is_db_url, redact

    return redact(str(source)) if is_db_url(source) else str(source)


def _finish(model: Any, source: Any, out: Path, engine: str, errors: list[PhotoError],
            seconds: float) -> EmbedReport:
    """Count rows and errors from the shards themselves and write the manifest (last)."""
    pq = need("pyarrow.parquet")
    shards = sorted(p.name for p in out.glob("*.parquet"))
    count = 0
    seen: set[str] = set()
    for name in shards:
        t = pq.read_table(out / name, columns=["id", "path", "error"])
        for pid, path, e in zip(t.column("id").to_pylist(), t.column("path").to_pylist(),
                                t.column("error").to_pylist(), strict=True):
            if e is not None:
                errors.append(PhotoError(path, e))
            elif pid in seen:  # a list read by Ray is not de-duplicated before the job
                errors.append(PhotoError(path, f"{path}: duplicate photo id '{pid}', "
                                               "skipped"))
            else:
                seen.add(pid)
                count += 1
    if count == 0 and not errors:
        raise MktError(f"{source}: no photos found")
    manifest = {
        "format": FORMAT, "model_id": model.model_id, "dim": model.embedding_dim,
        "text_dim": _text_dim(model), "precision": model.variant, "count": count,
        "errors": len(errors), "engine": engine, "source": _shown(source),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2), "shards": shards,
        "error_list": [e.to_dict() for e in errors[:MAX_LISTED_ERRORS]],
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return EmbedReport(out, count, errors, manifest)


# -- reading a vectors directory ------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise MktIndexError(f"{p}: not a vectors manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise MktIndexError(f"{p}: not a {FORMAT} manifest")
    return m


@dataclass
class Vectors:
    """The good rows of a vectors directory, ids unique (first kept)."""

    ids: list[str]
    vectors: np.ndarray
    meta: list[dict[str, Any]]
    text_vectors: np.ndarray | None
    manifest: dict[str, Any]


def load_vectors(path: str | os.PathLike, model_id: str | None = None) -> Vectors:
    """Read a vectors directory; refuses one of another model than ``model_id``."""
    pq = need("pyarrow.parquet")
    d = Path(path)
    m = read_manifest(d)
    if model_id is not None and m.get("model_id") != model_id:
        raise MktIndexError(f"{d}: vectors of model {m.get('model_id')}, but the bundle is "
                            f"model {model_id}; re-embed with this bundle")
    ids: list[str] = []
    vparts, tparts, meta = [], [], []
    seen: set[str] = set()
    for name in m.get("shards", []):
        shard = d / name
        if Path(name).name != name or not shard.is_file():
            raise MktIndexError(f"{shard}: shard listed in the manifest is missing")
        t = pq.read_table(shard)
        if set(t.column("model_id").to_pylist()) - {m["model_id"]}:
            raise MktIndexError(f"{shard}: rows of another model than {m['model_id']}")
        good = [i for i, e in enumerate(t.column("error").to_pylist()) if e is None]
        rows = t.select(["id", "product_id", "path", *LISTING_FIELDS]).to_pylist()
        emb = t.column("embedding").combine_chunks()
        dim = int(m["dim"])
        flat = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), np.float32)
        # flatten() drops null lists: rebuild the row positions of the good ones
        valid = np.flatnonzero(~np.asarray(emb.is_null().to_numpy(zero_copy_only=False)))
        vec = np.zeros((len(t), dim), np.float32)
        vec[valid] = flat.reshape(-1, dim)
        tvec = None
        if "text_embedding" in t.column_names:
            te = t.column("text_embedding").combine_chunks()
            tdim = te.type.list_size
            tflat = np.asarray(te.flatten().to_numpy(zero_copy_only=False), np.float32)
            tvalid = np.flatnonzero(~np.asarray(te.is_null().to_numpy(zero_copy_only=False)))
            tvec = np.full((len(t), tdim), np.nan, np.float32)
            tvec[tvalid] = tflat.reshape(-1, tdim)
        keep = []
        for i in good:
            if rows[i]["id"] in seen:
                continue
            seen.add(rows[i]["id"])
            keep.append(i)
            ids.append(rows[i]["id"])
            meta.append(rows[i])
        vparts.append(vec[keep])
        if tvec is not None:
            tparts.append(tvec[keep])
    dim = int(m["dim"])
    vectors = np.concatenate(vparts) if vparts else np.zeros((0, dim), np.float32)
    text = np.concatenate(tparts) if tparts else None
    return Vectors(ids, vectors, meta, text, m)


def build_index_from_vectors(
    model: Any,
    vectors_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    M: int = 16,
    ef_construction: int = 200,
    ef: int = 128,
    overwrite: bool = False,
    command: str | None = None,
) -> Any:
    """``mkt index build VECTORS_DIR``: an index from precomputed vectors, no photo pass.

    The listing-text vectors (MiniLM of title + description, for ``mkt search``) are computed
    here from the listing fields when the bundle has a text encoder: text only, cheap next
    to the photos."""
    from .index import INDEX_JSON, Index, check_index_writable
    from .indexing import embed_listing_text

    out = Path(out)
    if (out / INDEX_JSON).exists() and not overwrite:
        raise MktError(f"{out}: an index already exists (use --force, or `mkt index add`)")
    check_index_writable(out)
    v = load_vectors(vectors_dir, model.model_id)
    if not v.ids:
        raise MktError(f"{vectors_dir}: no vectors (every photo failed?)")
    m = v.manifest
    provenance = {"source": str(m.get("source")), "vectors": str(vectors_dir),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "photos": len(v.ids) + int(m.get("errors", 0)),
                  "skipped": int(m.get("errors", 0))}
    if command:
        provenance["command"] = command
    root = Path(str(m.get("source")))
    root = root if root.is_dir() else None
    # the same rows an index built from the photos gets (place, file signature): PhotoItem.meta
    from .catalogue import PhotoItem, with_places

    items = with_places(PhotoItem(id=i, path=Path(r["path"]), product_id=r.get("product_id"),
                                  **{k: r.get(k) for k in LISTING_FIELDS})
                        for i, r in zip(v.ids, v.meta, strict=True))
    meta = [it.meta(root) for it in items]
    idx = Index.create(out, model_id=m["model_id"], dim=int(m["dim"]), M=M,
                       ef_construction=ef_construction, ef=ef, overwrite=overwrite,
                       ids=v.ids, vectors=v.vectors, meta=meta, provenance=provenance,
                       text_vectors=v.text_vectors)
    embed_listing_text(model, idx)
    return idx


__all__ = [
    "FORMAT",
    "MANIFEST",
    "EmbedReport",
    "ScaleExtraError",
    "Vectors",
    "build_index_from_vectors",
    "embed_rows",
    "is_photo_list",
    "is_vectors_dir",
    "load_vectors",
    "need",
    "read_manifest",
    "read_photo_list",
    "run_embed_job",
    "source_rows",
]
