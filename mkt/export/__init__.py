"""Checkpoint -> bundle: fp32 ONNX, static int8 ONNX, parity report, manifest (docs/design.md).

Importing this package is cheap (no torch, no onnx); :func:`export_bundle` imports them.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    photos: str | Path | None = None,
    int8_only: bool = False,
    calib: int = 300,
    seed: int = 0,
    calibrate_method: str = "minmax",
    parity_limit: int | None = None,
    tries: list | None = None,
    exhaustive: bool = False,
    text: bool = False,
    fusion: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export ``checkpoint`` to the bundle directory ``out``; returns the manifest.

    Calibration photos: ``calib`` training-split photos of the cleaned ``data`` dir (default:
    the checkpoint's ``data.clean_dir``), sampled with ``seed``; parity: its test split (at most
    ``parity_limit`` photos). ``photos``: one folder for both instead (no accuracy).
    Quantisation configs (``tries``, default :func:`quantize.default_tries`) run in order and the
    first that meets every target is kept (``exhaustive``: run all, keep the best); if none
    does, the best one is kept and the report says by how much it misses.

    With a cleaned ``data`` dir the exporter also fits, on its val split, the temperature and
    the ``uncertain`` thresholds (:mod:`mkt.export.calibrate`; ``reference.npy``). ``text``:
    ship the all-MiniLM-L6-v2 text encoder (``text.int8.onnx`` + ``tokenizer.json``) and,
    with ``data`` and ``fusion``, the photo + title fusion (``fusion.npz``,
    :mod:`mkt.export.fusion`) fitted on train, chosen on val.
    """
    import numpy as np

    from mkt.runtime import bundle as B
    from mkt.runtime.fsutil import atomic_write_json
    from mkt.training.checkpoint import (
        data_for_report,
        model_id_from_state_dict,
        preprocess_of,
        read_checkpoint,
    )

    from .onnx_export import OPSET, export_fp32, torch_outputs, wrap_checkpoint
    from .parity import (
        TARGETS,
        compare,
        format_report,
        misses,
        photo_sets_from_data,
        photo_sets_from_dir,
        rank_key,
        run_onnx,
    )
    from .quantize import default_tries, preprocess, quantize_int8

    ckpt = read_checkpoint(checkpoint)
    contract = preprocess_of(ckpt)
    size = contract.size
    tries = tries if tries is not None else default_tries(calibrate_method)
    if not tries:
        raise ValueError("no quantisation configuration to try")
    if calib < 1:
        raise ValueError("--calib must be >= 1")

    if photos is not None:
        cal_set, par_set = photo_sets_from_dir(photos, size, calib, parity_limit, seed)
    else:
        if data is None:
            data = (ckpt.get("data") or {}).get("clean_dir")
            if not data:
                raise ValueError("checkpoint has no data.clean_dir; pass --data or --photos")
        cal_set, par_set = photo_sets_from_data(data, list(ckpt["labels"]), size, calib,
                                                parity_limit, seed)
    log(f"calibration: {len(cal_set)} photos ({cal_set.source}); "
        f"parity: {len(par_set)} photos ({par_set.source})")

    wrapped = wrap_checkpoint(ckpt)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="mkt-export-") as work_s, \
            B.atomic_bundle_dir(out) as bdir:
        work = Path(work_s)
        fp32 = work / B.FP32_FILE
        log(f"exporting {ckpt['arch']} to ONNX (opset {OPSET}) ...")
        export_fp32(wrapped, fp32, size)

        tl, te, *_ = torch_outputs(wrapped, par_set.images)
        fl, fe, fp32_ms = run_onnx(fp32, par_set.images)
        fp32_info: dict[str, Any] = {
            "torch_vs_onnx_logits_max_abs": float(np.abs(tl - fl).max()),
            "torch_vs_onnx_embedding_max_abs": float(np.abs(te - fe).max()),
            "torch_vs_onnx_top1_agreement": float((tl.argmax(1) == fl.argmax(1)).mean()),
            "logits_max_abs": float(np.abs(tl).max()),
            "acc": (float((fl.argmax(1) == par_set.labels).mean())
                    if par_set.labels is not None else None),
            "ms_per_photo": fp32_ms,
            "bytes": fp32.stat().st_size,
        }
        del tl, te

        pre = work / "model.pre.onnx"
        preprocess(fp32, pre)
        results: list[dict[str, Any]] = []
        for i, cfg in enumerate(tries):
            qpath = work / f"try{i}.int8.onnx"
            log(f"int8 try {i + 1}/{len(tries)}: {cfg.name} ...")
            res: dict[str, Any] = {"name": cfg.name, "config": cfg.to_dict()}
            try:
                qinfo = quantize_int8(pre, qpath, cal_set.images, cfg, cache_dir=work)
                ql, qe, ms = run_onnx(qpath, par_set.images)
                m = compare((fl, fe), (ql, qe), par_set.labels)
                # An int8 model slower than fp32 defeats the point of an edge runtime (U8U8
                # kernels on AVX2 without VNNI are ~8x slower than fp32 here): never chosen
                # while a faster try exists.
                slow = ms > fp32_ms
                res.update({"metrics": m, "misses": misses(m),
                            "meets_targets": not misses(m) and not slow,
                            "slower_than_fp32": slow, "ms_per_photo": ms,
                            "bytes": qpath.stat().st_size,
                            "quantisation": qinfo, "path": str(qpath)})
            except Exception as e:  # noqa: BLE001 - one failed config must not end the export
                res["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            results.append(res)
            if res.get("meets_targets") and not exhaustive:
                break
        good = [r for r in results if "metrics" in r]
        if not good:
            raise RuntimeError("every int8 quantisation try failed: "
                               + "; ".join(f"{r['name']}: {r['error']}" for r in results))
        fast = [r for r in good if not r["slower_than_fp32"]] or good
        best = min(fast, key=lambda r: rank_key(r["metrics"]))

        shutil.copyfile(best["path"], bdir / B.INT8_FILE)
        if not int8_only:
            shutil.copyfile(fp32, bdir / B.FP32_FILE)
        for r in results:
            r.pop("path", None)
            if r is not best and "quantisation" in r:  # keep the report readable
                r["quantisation"].pop("nodes_excluded", None)

        report = {
            "targets": TARGETS,
            "parity_set": {"n": len(par_set), "source": par_set.source,
                           "skipped_unreadable": par_set.skipped},
            "calibration_set": {"n": len(cal_set), "source": cal_set.source, "seed": seed},
            "fp32": fp32_info,
            "tries": results,
            "chosen": best["name"],
            "meets_targets": bool(best["meets_targets"]),
            "misses": best["misses"],
            "metrics": best["metrics"],
        }
        atomic_write_json(bdir / B.PARITY_FILE, report)
        log(format_report(report))

        calibration = None
        if par_set.labels is not None and data is not None:
            calibration = _calibrate(fp32, Path(data), list(ckpt["labels"]), size, seed, bdir,
                                     run_onnx, log)
        text_section = None
        if text:
            from .text_export import check_texts_from_data, export_text_model

            texts = (check_texts_from_data(data) if data is not None
                     else [f"photo {i}" for i in par_set.ids[:50]])
            text_section = export_text_model(bdir, check_texts=texts, log=log)

        q = best["quantisation"]
        models = {"int8": B.INT8_FILE} if int8_only else {"int8": B.INT8_FILE,
                                                         "fp32": B.FP32_FILE}
        graph_outputs = wrapped.output_names(size)
        cdata = data_for_report(ckpt) or {}
        manifest = {
            "schema_version": B.SCHEMA_VERSION,
            "model_id": model_id_from_state_dict(ckpt["state_dict"]),
            "arch": ckpt["arch"],
            **contract.to_manifest(),
            "labels": list(ckpt["labels"]),
            "embedding_dim": int(ckpt.get("retrieval_dim") or ckpt["embed_dim"]),
            "outputs": {n: n for n in graph_outputs},
            "models": models,
            "default": "int8",
            "versions": B.library_versions(),
            "training": {
                "data": cdata,
                "split": {"sha256": cdata.get("split_sha256"), "seed": cdata.get("split_seed")},
                "command": ckpt.get("command"),
                "metrics": ckpt.get("metrics", {}),
                "config": ckpt.get("config", {}),
                "epoch": ckpt.get("epoch"),
                "best_metric": ckpt.get("best_metric"),
                # the second stage (mkt.training.retrieval), when the checkpoint had one
                "retrieval": {k: v for k, v in (ckpt.get("retrieval") or {}).items()
                              if k != "history"} or None,
            },
            "export": {
                "command": command,
                "checkpoint": str(Path(checkpoint)),
                "opset": OPSET,
                "calibration": {
                    "method": best["config"]["method"],
                    "format": best["config"].get("quant_format", "QDQ"),
                    "activation_type": best["config"]["activation_type"],
                    "weight_type": "QInt8",
                    "per_channel": best["config"]["per_channel"],
                    "reduce_range": best["config"]["reduce_range"],
                    "a7_gemm_inputs": best["config"].get("a7_gemm_inputs", False),
                    "w8_depthwise": best["config"].get("w8_depthwise", False),
                    "fp32_layers": list(best["config"].get("fp32_layers", ())),
                    "fp32_ops": list(best["config"].get("fp32_ops", ())),
                    "clips_folded": q.get("clips_folded"),
                    "fp32_scope": best["config"]["exclude"],
                    "nodes_excluded": len(q["nodes_excluded"]),
                    "extra_options": q["extra_options"],
                    "photos": len(cal_set),
                    "photo_ids_sha256": hashlib.sha256(
                        "\n".join(sorted(cal_set.ids)).encode()).hexdigest(),
                    "source": cal_set.source,
                    "seed": seed,
                    "try": best["name"],
                    "tries": len(results),
                },
            },
            "parity": {
                "n": len(par_set),
                "set": par_set.source,
                "torch_vs_onnx_fp32_logits_max_abs": fp32_info["torch_vs_onnx_logits_max_abs"],
                **best["metrics"],
                "meets_targets": bool(best["meets_targets"]),
                "targets": TARGETS,
            },
        }
        if calibration is not None:
            manifest["calibration"] = calibration
        if text_section is not None:
            manifest["text"] = text_section
        manifest = B.write_manifest(bdir, manifest)
        if text_section is not None and data is not None and fusion:
            from .fusion import fit_fusion

            log("fitting the photo + title fusion (train split, chosen on val) ...")
            rep = fit_fusion(bdir, data, work / "fusion")
            shutil.copyfile(work / "fusion" / "fusion.npz", bdir / "fusion.npz")
            rep.pop("bundle", None)  # a temp dir: no machine paths in the manifest
            manifest["fusion"] = {"file": "fusion.npz", **rep}
            manifest = B.write_manifest(bdir, manifest)
        B.verify_bundle(bdir)
    log(f"bundle written to {out} (model_id {manifest['model_id']})")
    return manifest


def _calibrate(fp32: Path, data: Path, labels: list[str], size: int, seed: int, bdir: Path,
               run_onnx: Callable[..., Any], log: Callable[[str], None],
               n_train: int = 4000) -> dict[str, Any] | None:
    """Fit the temperature and the uncertainty thresholds on val (fp32 model, contract path);
    writes ``reference.npy`` into the bundle and returns the manifest's calibration section."""
    import numpy as np

    from .calibrate import fit_calibration
    from .parity import split_photo_set

    val = split_photo_set(data, labels, size, "val", None, seed)
    if len(val) < 20:
        log(f"calibration skipped: {len(val)} val photos in {data} (need at least 20)")
        return None
    train = split_photo_set(data, labels, size, "train", n_train, seed)
    log(f"calibration on {len(val)} val photos, reference set from {len(train)} train photos")
    vl, ve = run_onnx(fp32, val.images)[:2]
    te = run_onnx(fp32, train.images)[1]
    section, ref = fit_calibration(vl, val.labels, ve, te, val.images, seed=seed)
    np.save(bdir / "reference.npy", ref.astype(np.float32), allow_pickle=False)
    log(f"temperature {section['temperature']:.3f}: val ECE {section['ece_before']:.3f} -> "
        f"{section['ece_after']:.3f}; uncertain on {section['val_flagged_share']:.1%} of val")
    return section


__all__ = ["export_bundle"]
