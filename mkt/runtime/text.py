"""Sentence embeddings of listing text: the bundle's MiniLM ONNX graph + ``tokenizers``.

The graph (made by ``mkt.export.text_export``) takes ``input_ids``/``attention_mask``
(/``token_type_ids``) int64 ``[N, T]`` and returns the mean-pooled, L2-normalised 384-d
sentence embedding, so this module only tokenises (truncating to ``max_tokens``, padding each
batch to its longest text) and runs the session. No torch.

The bundle manifest names it under ``"text"``::

    "text": {"model": "text.int8.onnx", "tokenizer": "tokenizer.json", "dim": 384,
             "max_tokens": 128, "pooling": "mean", "normalize": true, ...}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, MktError
from .session import cpu_session, default_threads


class EmptyTextError(MktError):
    """A text query that is empty or only whitespace: there is nothing to search for."""


class TextModelError(BundleError):
    """The bundle has no text model, or its text model / tokenizer cannot be loaded."""


def _threads(threads: int | None) -> int:
    return int(threads) if threads else default_threads()


def check_text(text: Any, what: str = "text query") -> str:
    """``text`` as a str, or :class:`EmptyTextError` if it is empty/whitespace/not text."""
    if not isinstance(text, str):
        raise EmptyTextError(f"{what}: expected text, got {type(text).__name__}")
    if not text.strip():
        raise EmptyTextError(f"{what} is empty; give some words to search for")
    return text


class TextEncoder:
    """MiniLM sentence encoder on onnxruntime.

    >>> enc = TextEncoder.from_bundle(load_bundle())
    >>> enc.encode(["oak dining table"]).shape
    (1, 384)

    After each :meth:`encode`, ``last_truncated`` lists, per text, whether it was longer than
    ``max_tokens`` tokens and cut (so a CLI can say so once).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        tokenizer_path: str | os.PathLike,
        max_tokens: int = 128,
        threads: int | None = None,
        *,
        dim: int | None = None,
        output: str | None = None,
    ) -> None:
        mp, tp = Path(model_path), Path(tokenizer_path)
        for p, what in ((mp, "text model"), (tp, "tokenizer")):
            if not p.is_file():
                raise TextModelError(f"{p}: {what} file missing")
        if int(max_tokens) < 2:
            raise TextModelError(f"{mp}: max_tokens must be >= 2, got {max_tokens}")
        self.model_path, self.tokenizer_path = mp, tp
        self.max_tokens = int(max_tokens)
        self.threads = _threads(threads)
        self.last_truncated: list[bool] = []
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tp))
        except Exception as e:  # tokenizers raises its own Exception type
            raise TextModelError(f"{tp}: cannot load tokenizer ({e})") from None
        tok.enable_truncation(max_length=self.max_tokens)
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self._tok = tok

        self.session = cpu_session(mp, self.threads, error=TextModelError, what="text model")
        self._inputs = [i.name for i in self.session.get_inputs()]
        for need in ("input_ids", "attention_mask"):
            if need not in self._inputs:
                raise TextModelError(f"{mp}: text model has no input '{need}'")
        outs = self.session.get_outputs()
        names = [o.name for o in outs]
        self._output = output or ("sentence_embedding" if "sentence_embedding" in names
                                  else names[0])
        if self._output not in names:
            raise TextModelError(f"{mp}: text model has no output '{self._output}'")
        shp = next(o.shape for o in outs if o.name == self._output)
        gdim = shp[-1] if len(shp) == 2 and isinstance(shp[-1], int) else None
        if dim is not None and gdim is not None and int(dim) != gdim:
            raise TextModelError(f"{mp}: text model output is {gdim}-d, manifest says {dim}")
        self.dim = int(gdim or dim or 384)

    @classmethod
    def from_bundle(cls, bundle: Any, threads: int | None = None) -> TextEncoder:
        """The text encoder a bundle ships (``manifest["text"]``); :class:`TextModelError`
        if the bundle has none. File hashes were checked when the bundle was loaded."""
        sec = (getattr(bundle, "manifest", None) or {}).get("text")
        where = Path(getattr(bundle, "path", "."))
        if not isinstance(sec, dict) or "model" not in sec or "tokenizer" not in sec:
            raise TextModelError(
                f"{where}: bundle has no text model (manifest has no 'text' section); "
                "export one with the text encoder to search by text"
            )
        for k in ("model", "tokenizer"):
            name = str(sec[k])
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise TextModelError(f"{where}: bad file name in manifest text.{k}: {name!r}")
        return cls(
            where / str(sec["model"]),
            where / str(sec["tokenizer"]),
            max_tokens=int(sec.get("max_tokens", 128)),
            threads=threads,
            dim=int(sec["dim"]) if "dim" in sec else None,
            output=sec.get("output"),
        )

    def tokenize(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Model inputs for ``texts`` (padded to the longest) and which were truncated."""
        encs = self._tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.asarray([e.type_ids for e in encs], dtype=np.int64)
        return feed, [len(e.overflowing) > 0 for e in encs]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``float32 [N, dim]`` L2-normalised embeddings; :class:`EmptyTextError` for an
        empty/whitespace text.

        Each text runs through the graph on its own (``batch_size`` only sets how many are
        tokenised at once): the int8 graph quantises activations dynamically with one scale
        per tensor, so in a padded batch a text's embedding would depend on the texts beside
        it (cosine down to ~0.97 between batchings). Alone, a text always gets the same
        vector, and there is no padding to compute."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [check_text(t, f"text {i}" if len(texts) > 1 else "text query")
                 for i, t in enumerate(texts)]
        n = len(texts)
        out = np.zeros((n, self.dim), np.float32)
        trunc = [False] * n
        bs = max(1, int(batch_size))
        names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if "token_type_ids" in self._inputs else [])
        for s in range(0, n, bs):
            encs = self._tok.encode_batch(texts[s: s + bs])
            for j, e in enumerate(encs):
                m = int(sum(e.attention_mask))  # padding (to the batch) is cut off again
                vals = (e.ids, e.attention_mask, e.type_ids)
                feed = {k: np.asarray(v[:m], np.int64)[None]
                        for k, v in zip(names, vals, strict=False)}
                (emb,) = self.session.run([self._output], feed)
                out[s + j] = np.asarray(emb, np.float32)[0]
                trunc[s + j] = len(e.overflowing) > 0
        # The graph normalises already; renormalise so int8 rounding never leaves |v| != 1.
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.last_truncated = trunc
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """``float32 [dim]`` embedding of one text."""
        return self.encode([text])[0]

    def __repr__(self) -> str:
        return f"TextEncoder(model={str(self.model_path)!r}, max_tokens={self.max_tokens})"


__all__ = ["EmptyTextError", "TextEncoder", "TextModelError", "check_text"]
