"""ONNX Runtime inference: classification and embeddings from one trunk pass.

The graph takes ``uint8 [N, S, S, 3]`` (photos through the preprocessing contract,
:mod:`mkt.runtime.preprocess`) and returns ``logits [N, C]``, ``embedding [N, D]``
(L2-normalised) and, in bundles trained with text, ``text_embedding [N, T]``: the photo in the
text encoder's space, for cross-modal search (docs/design.md). Softmax is done here in numpy,
with the temperature fitted on val when the bundle has one, so scores are calibrated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle
from .calibration import Calibration
from .errors import BundleError, MktError
from .images import ImageSource
from .session import default_threads, model_session, resolve_backend


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (float64 inside, float32 out)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _check_shapes(session: Any, b: Bundle, path: Any) -> None:
    """Refuse a manifest that disagrees with its graph (input size, number of labels,
    embedding dim): it would otherwise fail on the first photo with an onnxruntime error, or
    mislabel classes. Symbolic (named) dimensions are not checked."""
    inp = next(i for i in session.get_inputs() if i.name == b.input_name)
    s = b.input_size
    if inp.type != "tensor(uint8)":
        raise BundleError(f"{path}: model input is {inp.type}, manifest says uint8")
    shape = list(inp.shape)
    want: list[int | None] = [None, s, s, 3]
    if len(shape) != 4 or any(
        isinstance(g, int) and w is not None and g != w for g, w in zip(shape, want, strict=True)
    ):
        raise BundleError(
            f"{path}: model input is {shape}, manifest says uint8 [N, {s}, {s}, 3]"
        )
    outs = {o.name: list(o.shape) for o in session.get_outputs()}
    for name, n, what in (
        (b.logits_name, len(b.labels), "labels"),
        (b.embedding_name, b.embedding_dim, "embedding_dim"),
    ):
        shp = outs[name]
        if len(shp) != 2 or (isinstance(shp[1], int) and shp[1] != n):
            raise BundleError(
                f"{path}: model output '{name}' is {shp}, manifest {what} says [N, {n}]"
            )


@dataclass
class Prediction:
    """One classification: best category, its probability, and the top-k list."""

    path: str
    category: str
    score: float
    top: list[tuple[str, float]] = field(default_factory=list)
    paths: list[str] | None = None  # set for a --listing prediction (several photos)
    #: the top score is below the confidence floor fitted on val: say so, don't guess
    uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path}
        if self.paths is not None:
            d["paths"] = list(self.paths)
        d["category"] = self.category
        d["score"] = round(float(self.score), 6)
        d["uncertain"] = bool(self.uncertain)
        d["top"] = [{"category": c, "score": round(float(s), 6)} for c, s in self.top]
        return d


class Model:
    """A bundle's ONNX model in an onnxruntime CPU session.

    >>> m = Model()                       # packaged bundle
    >>> m.classify(["sofa.jpg"])[0].category
    'Home & Garden'
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike | None = None,
        *,
        variant: str | None = None,
        threads: int | None = None,
        backend: str | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.threads = int(threads) if threads else default_threads()
        #: ``onnxruntime`` (default) or ``openvino`` (``$MKT_BACKEND``; the ``openvino`` extra)
        self.backend = resolve_backend(backend)
        self.variant, self.precision_info = self._choose_variant(variant)
        path = self.bundle.model_path(self.variant)
        self.calibration = Calibration.from_manifest(self.bundle.calibration, self.bundle.path)
        self.temperature = self.calibration.temperature

        self.session = model_session(path, self.threads, self.backend)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        b = self.bundle
        if b.input_name not in inputs:
            raise BundleError(f"{path}: model has no input '{b.input_name}'")
        for name in (b.logits_name, b.embedding_name):
            if name not in outputs:
                raise BundleError(f"{path}: model has no output '{name}'")
        self.text_embedding_name = (b.text_embedding_name
                                    if b.text_embedding_name in outputs else None)
        _check_shapes(self.session, b, path)

    def _choose_variant(self, requested: str | None) -> tuple[str, dict[str, Any]]:
        """``None``: ``$MKT_PRECISION`` or ``auto``. ``auto``: the faster precision on this
        CPU (measured once per CPU and bundle, cached; :mod:`mkt.runtime.precision`);
        ``int8``/``fp32``: that one."""
        b = self.bundle
        req = (requested or os.environ.get("MKT_PRECISION") or "auto").strip().lower()
        if req not in ("auto", "int8", "fp32"):
            raise BundleError(f"unknown precision {req!r}; use auto, int8 or fp32")
        if req == "auto" and len(b.models) > 1:
            from .precision import choose_precision

            models = {v: b.model_path(v) for v in b.models}
            return choose_precision(b.path, models, "auto", threads=self.threads)
        if req == "auto":
            return b.default_variant, {"choice": b.default_variant,
                                       "reason": "the bundle has one precision"}
        return req, {"choice": req, "reason": "requested"}

    # -- properties ---------------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def input_size(self) -> int:
        return self.bundle.input_size

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def embedding_dim(self) -> int:
        return self.bundle.embedding_dim

    @property
    def preprocess(self):  # noqa: ANN201 - Preprocess, imported lazily with the bundle
        """The preprocessing contract this model was trained with."""
        return self.bundle.preprocess

    @property
    def has_text_embedding(self) -> bool:
        """True when the graph also places photos in the text encoder's space."""
        return self.text_embedding_name is not None

    # -- core -----------------------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on ``uint8 [N, S, S, 3]``: returns ``(logits [N,C], emb [N,D])``."""
        out = self.run(batch)
        return out["logits"], out["embedding"]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of one graph pass: ``logits``, ``embedding`` and, when the bundle has
        it, ``text_embedding``."""
        x = np.asarray(batch)
        s = self.input_size
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise ValueError(f"expected uint8 [N,{s},{s},3], got {x.dtype} {list(x.shape)}")
        if x.dtype != np.uint8:
            raise ValueError(f"expected uint8 input, got {x.dtype}")
        b = self.bundle
        names = {"logits": b.logits_name, "embedding": b.embedding_name}
        if self.text_embedding_name:
            names["text_embedding"] = self.text_embedding_name
        if x.shape[0] == 0:
            widths = {"logits": len(self.labels), "embedding": self.embedding_dim}
            return {k: np.zeros((0, widths.get(k, 0)), np.float32) for k in names}
        outs = self.session.run(list(names.values()), {b.input_name: np.ascontiguousarray(x)})
        return {k: np.asarray(v, np.float32) for k, v in zip(names, outs, strict=True)}

    def load(self, sources: Sequence[ImageSource], *, workers: int | None = None) -> np.ndarray:
        """Decode + letterbox photos in parallel threads (PIL releases the GIL while decoding).

        Raises :class:`BadImageError` on the first bad photo; use
        :func:`mkt.runtime.images.load_letterboxed` per photo to skip bad ones instead.
        """
        s = self.input_size
        if not sources:
            return np.zeros((0, s, s, 3), np.uint8)
        load = self.preprocess.load
        n = workers or self.threads
        if n <= 1 or len(sources) == 1:
            arrs = [load(p) for p in sources]
        else:
            with ThreadPoolExecutor(max_workers=n) as ex:
                arrs = list(ex.map(load, sources))
        return np.stack(arrs)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: softmax of ``logits / temperature``."""
        return softmax(np.atleast_2d(logits) / self.temperature)

    def top_k(self, logits: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Calibrated softmax of each row and the ``k`` best ``(label, probability)`` pairs."""
        return self.top_of(self.probabilities(logits), k)

    def top_of(self, probs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` best ``(label, probability)`` pairs of each row of probabilities."""
        k = max(1, min(int(k), probs.shape[1]))
        out = []
        for row in probs:
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([(self.labels[i], float(row[i])) for i in idx])
        return out

    def classify_arrays(
        self,
        batch: np.ndarray,
        names: Sequence[str] | None = None,
        *,
        k: int = 3,
        listing: bool = False,
        title: str | None = None,
        votes: Any = None,
    ) -> list[Prediction]:
        """Classify already-letterboxed photos. ``listing``: one prediction for all photos
        (mean of the logits, then softmax), as if they were the photos of one listing.
        ``title``: the seller's title too, through the bundle's learned photo + title fusion
        (see :meth:`classify_with_title`). ``votes``: a
        :class:`~mkt.runtime.votes.NeighbourVotes` whose catalogue neighbours join the
        answer; ``uncertain`` still comes from the classifier's own calibrated scores."""
        logits, emb = self.predict(batch)
        names = list(names) if names is not None else [str(i) for i in range(len(logits))]
        if title is not None and votes is not None:
            raise MktError("neighbour votes and a title cannot be combined (the title fusion "
                           "was fitted on photo scores alone)")
        if title is not None:
            return self.classify_with_title(batch, logits, emb, names, title, k=k,
                                            listing=listing)
        if listing:
            if len(logits) == 0:
                return []
            mean = logits.mean(axis=0, keepdims=True)
            centre = emb.mean(0, keepdims=True)
            centre /= max(float(np.linalg.norm(centre)), 1e-12)
            probs = self.probabilities(mean)
            if votes is not None:
                probs = votes.fuse(probs, votes.distribution(centre))
            top = self.top_of(probs, k)[0]
            # the listing is uncertain when its averaged answer is, or when no photo is sure
            each = self.calibration.flags(self.probabilities(logits), emb, batch)
            whole = self.calibration.flags(self.probabilities(mean), centre, None)
            return [Prediction(names[0], top[0][0], top[0][1], top, paths=names,
                               uncertain=bool(whole[0] or each.all()))]
        own = self.probabilities(logits)
        flags = self.calibration.flags(own, emb, batch)
        probs = own if votes is None else votes.fuse(own, votes.distribution(emb))
        return [Prediction(name, top[0][0], top[0][1], top, uncertain=bool(f))
                for name, top, f in zip(names, self.top_of(probs, k), flags, strict=True)]

    def text_encoder(self) -> Any:
        """The bundle's text encoder (loaded once); :class:`BundleError` if it has none."""
        if getattr(self, "_text", None) is None:
            from .text import TextEncoder

            self._text = TextEncoder.from_bundle(self.bundle, threads=self.threads)
        return self._text

    def fusion(self) -> Any:
        """The bundle's photo + title fusion (loaded once); :class:`BundleError` if none."""
        if getattr(self, "_fusion", None) is None:
            from .fusion import load_fusion

            self._fusion = load_fusion(self.bundle)
        return self._fusion

    def classify_with_title(self, batch: np.ndarray, logits: np.ndarray, emb: np.ndarray,
                            names: list[str], title: str, *, k: int = 3,
                            listing: bool = False) -> list[Prediction]:
        """Category from photo(s) and the seller's title, as a sell flow suggests it: the
        fusion (a logistic regression over the photo log-probabilities and the title's
        embedding, fitted on train and chosen on val) scores each photo, or the listing.
        ``uncertain`` then says only whether the photos look like no catalogue photo (the
        confidence floor was fitted on photo-only scores)."""
        from .text import check_text

        tvec = self.text_encoder().encode([check_text(title, "title")])[0]
        fusion = self.fusion()
        ood = self.calibration.flags(np.ones((len(logits), 1), np.float32), emb, batch)
        groups = [list(range(len(logits)))] if listing else [[i] for i in range(len(logits))]
        out = []
        for g in groups:
            if not g:
                continue
            top = fusion.classify_listing(logits[g], emb[g], tvec, k=max(1, min(k, 1000)))
            out.append(Prediction(names[g[0]], top[0][0], top[0][1], top,
                                  paths=[names[i] for i in g] if listing else None,
                                  uncertain=bool(ood[g].all())))
        return out

    def classify(
        self, paths: Iterable[ImageSource], k: int = 3, *, listing: bool = False,
        batch_size: int = 32, title: str | None = None,
    ) -> list[Prediction]:
        """Classify photos (paths or bytes): one :class:`Prediction` each, or one for all
        of them with ``listing=True``. A bad photo raises :class:`BadImageError`."""
        srcs = list(paths)
        names = [
            os.fspath(p) if isinstance(p, (str, os.PathLike)) else f"<bytes:{i}>"
            for i, p in enumerate(srcs)
        ]
        if listing:
            return self.classify_arrays(self.load(srcs), names, k=k, listing=True, title=title)
        out: list[Prediction] = []
        for i in range(0, len(srcs), batch_size):
            arr = self.load(srcs[i : i + batch_size])
            out += self.classify_arrays(arr, names[i : i + batch_size], k=k, title=title)
        return out

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, D]`` (L2-normalised) of letterboxed photos."""
        return self.predict(batch)[1]

    def embed(self, paths: Iterable[ImageSource], *, batch_size: int = 32) -> np.ndarray:
        """Embeddings ``float32 [N, D]`` (L2-normalised) of photos, in order."""
        srcs = list(paths)
        parts = [
            self.embed_arrays(self.load(srcs[i : i + batch_size]))
            for i in range(0, len(srcs), batch_size)
        ]
        if not parts:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return (
            f"Model(model_id={self.model_id!r}, arch={self.bundle.arch!r}, "
            f"variant={self.variant!r}, threads={self.threads})"
        )

