"""``mkt info``: the bundle and index in use, this CPU, library versions, the example photos.

The human form is a short summary; ``--json`` has everything (the whole manifest summary with
its training history, the index's ``index.json``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import err_line
from .options import BundleOpt, command
from .output import emit_json


def register(app: typer.Typer) -> None:
    command(app, "info")(info_command)


def info_command(
    bundle: BundleOpt = None,
    index: Annotated[Path | None, typer.Option(
        "--index", metavar="DIR", help="Index dir (default: the packaged one).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Everything (training history included) as one JSON object.")] = False,
) -> None:
    """Show the model and index in use, this CPU, library versions and the example photos.

    The summary names the precision that runs on this CPU (int8 or fp32); --json has every
    detail.
    """
    import platform
    from importlib import metadata

    from .. import __version__
    from ..runtime.bundle import load_bundle
    from ..runtime.errors import MktError
    from ..runtime.index import Index
    from .example import example_photos

    out: dict[str, Any] = {"mkt": __version__, "python": platform.python_version()}
    versions: dict[str, str] = {}
    for dist in ("onnxruntime", "numpy", "pillow", "hnswlib", "typer", "jinja2"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    out["versions"] = versions
    out["cpu"] = _cpu()
    out["examples"] = [str(p) for p in example_photos()]
    fatal = None
    b = None
    try:
        b = load_bundle(bundle)
        out["bundle"] = b.summary()
        out["bundle"]["bytes_on_disk"] = _dir_bytes(b.path)
        out["bundle"]["precision"] = _precision(b)
    except MktError as e:
        out["bundle"] = {"error": str(e)}
        fatal = fatal or (e if bundle is not None else None)
    try:
        info = Index.open(index).info()
        if b is not None:
            info["matches_bundle"] = info["model_id"] == b.model_id
        info["bytes_on_disk"] = _dir_bytes(Path(info["path"]))
        out["index"] = info
    except MktError as e:
        out["index"] = {"error": str(e)}
        fatal = fatal or (e if index is not None else None)
    if as_json:
        emit_json(out)
    else:
        sys.stdout.write("\n".join(summary_lines(out, b)) + "\n")
    if fatal is not None:
        err_line(fatal)  # the same one line as every other command, on stderr
        raise typer.Exit(fatal.exit_code)


def _cpu() -> dict[str, Any]:
    """This CPU's model and the instruction sets onnxruntime's int8 kernels care about."""
    try:
        from ..runtime.precision import cpu_features
    except ImportError:  # pragma: no cover - an older runtime
        import platform

        return {"model": platform.processor() or platform.machine(), "flags": {},
                "machine": platform.machine(), "source": "platform"}
    return cpu_features()


def _dir_bytes(d: Path) -> int:
    try:
        return sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())
    except OSError:
        return 0


def _precision(b: Any) -> dict[str, Any]:
    """Which model file runs here, as :class:`~mkt.runtime.model.Model` picks it (the
    measurement behind "auto" is cached per CPU, so this is what every command will use)."""
    if len(b.models) > 1:
        try:
            from ..runtime.precision import choose_precision

            choice, ev = choose_precision(b.path, {v: b.model_path(v) for v in b.models}, "auto")
            return {"choice": choice, "reason": ev.get("reason", "measured")}
        except (ValueError, OSError) as e:
            return {"choice": b.default_variant, "reason": f"default ({e})"}
    return {"choice": b.default_variant, "reason": "the only model in the bundle"}


def _mb(n: Any) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def headline_metrics(manifest: dict[str, Any]) -> list[str]:
    """A few numbers from the manifest: test accuracy of the exported model (its parity run)
    and the training run's best validation score. Missing keys are left out."""
    out = []
    par = manifest.get("parity") if isinstance(manifest.get("parity"), dict) else {}
    acc = {k: par.get(k) for k in ("acc_int8", "acc_fp32") if _num(par.get(k))}
    if acc:
        where = f" on {par['n']} test photos" if _num(par.get("n")) else ""
        out.append("top-1 accuracy " + ", ".join(f"{k[4:]} {v:.3f}" for k, v in acc.items())
                   + where)
    if _num(par.get("top1_agreement")):
        out.append(f"int8/fp32 top-1 agreement {par['top1_agreement']:.3f}")
    tr = manifest.get("training") if isinstance(manifest.get("training"), dict) else {}
    if _num(tr.get("best_metric")):
        ep = f" (epoch {tr['epoch']})" if _num(tr.get("epoch")) else ""
        out.append(f"best validation score {tr['best_metric']:.3f}{ep}")
    return out


def summary_lines(out: dict[str, Any], b: Any) -> list[str]:
    """The human ``mkt info``: a dozen lines."""
    v = out["versions"]
    lines = [f"mkt {out['mkt']} (python {out['python']}; "
             + ", ".join(f"{k} {x}" for k, x in v.items()) + ")"]
    bd = out["bundle"]
    if "error" in bd:
        lines.append(f"model     error: {bd['error']}")
    else:
        files = ", ".join(f"{k} {_mb(n)}" for k, n in bd.get("model_bytes", {}).items())
        lines += [
            f"model     {bd['arch']}, {bd['num_classes']} labels, {bd['input_size']} px input, "
            f"{bd['embedding_dim']}-d embedding, id {bd['model_id']}",
            f"          {bd['path']} ({_mb(bd['bytes_on_disk'])} on disk: {files})",
            f"          runs {bd['precision']['choice']} here ({bd['precision']['reason']})",
        ]
        metrics = headline_metrics(b.manifest if b is not None else {})
        lines += [f"          {m}" for m in metrics]
    ix = out["index"]
    if "error" in ix:
        lines.append(f"index     error: {ix['error']}")
    else:
        match = ix.get("matches_bundle")
        lines += [
            f"index     {ix.get('count', 0):,} photos ({ix.get('listings', 0):,} listings), "
            f"{ix.get('dim')}-d, hnsw M={ix.get('M')} ef={ix.get('ef')}, generation "
            f"{ix.get('generation')}"
            + ("" if match is None else ("; matches the model" if match else
                                         "; NOT built by this model")),
            f"          {ix['path']} ({_mb(ix['bytes_on_disk'])} on disk)",
        ]
    cpu = out["cpu"]
    flags = ", ".join(f"{k} {'yes' if x else 'no'}" for k, x in cpu["flags"].items())
    known = cpu.get("source") == "cpuinfo"
    lines.append(f"cpu       {cpu['model']} ({cpu['machine']}): "
                 + (flags if known else "instruction sets unknown (no /proc/cpuinfo)"))
    ex = out["examples"]
    if ex:
        lines.append(f"examples  {ex[0]}")
        lines += [f"          {p}" for p in ex[1:]]
    lines.append("(mkt info --json: everything, with the training history)")
    return lines
