"""Regenerate the README's "Speed on this CPU" section from the benchmark results, so every
figure there comes from the commands below and nowhere else:

    P="--photos tests/fixtures/photos --photos mkt/assets/examples"
    mkt bench --threads 2 $P --out benchmarks/results/bench.json         # runtime targets
    python benchmarks/compare.py --core --threads 2 $P                   # peers, same run
    python benchmarks/venv_size.py                                       # base install size
    python benchmarks/speed_readme.py                                    # rewrites README.md

(``--check``: exit 1 when the README differs from what the results give.) The section lies
between ``<!-- speed:begin -->`` and ``<!-- speed:end -->``; the load average of each run is
printed beside its figures, because on a shared machine it moves them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RES = REPO / "benchmarks" / "results"
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"


def _load(name: str) -> dict[str, Any] | None:
    """A results file, with this checkout's absolute paths made relative (and written back
    so: no machine paths in committed results)."""
    p = RES / name
    if not p.is_file():
        return None
    text = p.read_text()
    clean = text.replace(str(REPO) + "/", "").replace(str(REPO), ".")
    if clean != text:
        p.write_text(clean)
    return json.loads(clean)


def _met(ok: bool | None) -> str:
    return "–" if ok is None else "yes" if ok else "**no**"


def _f(v: Any, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _load_note(machine: dict[str, Any]) -> str:
    """Whether the run had the cores to itself: more runnable tasks at the start (1-minute
    load average) than usable cores means other jobs took part of the CPU, and every time
    is then an upper bound."""
    load = (machine.get("loadavg") or [0.0])[0]
    cores = machine.get("usable_cores") or machine.get("logical_cores") or 2
    if load > cores:
        return (f" (**loaded**: other jobs shared the {cores} cores; rerun on a quiet machine "
                "for the real figures)")
    return " (quiet: nothing else ran)"


def render(bench: dict[str, Any], cmp: dict[str, Any] | None,
           venv: dict[str, Any] | None) -> str:
    m, t = bench["machine"], bench["targets"]
    ix, ph, cs = bench["indexing"], bench["phone_12mp"], bench["cold_start"]
    serve = bench.get("serve_idle") or {}
    L = [f"`mkt bench` on {m['model']} ({m.get('physical_cores', '?')} cores, "
         f"{', '.join(m.get('simd', []))}), bundle {bench['bundle']['variant']} "
         f"({bench['bundle'].get('backend', 'onnxruntime')}), threads "
         f"{bench['settings']['threads']}; load average {m.get('loadavg')} at start, "
         f"{m.get('loadavg_end')} at end{_load_note(m)}. Full output: "
         "[benchmarks/results/bench.json](benchmarks/results/bench.json).", "",
         "| measure | value | target | met |", "| --- | --- | --- | --- |"]

    def tgt(name: str) -> tuple[str, str]:
        x = t.get(name)
        return (x["target"], _met(x["met"])) if x else ("–", "–")

    e2e = bench["classify_e2e_ms"]
    L.append(f"| classify end to end, batch 1, p50 / p95 / p99 | {e2e['p50']:.1f} / "
             f"{e2e['p95']:.1f} / {e2e['p99']:.1f} ms | – | – |")
    L.append(f"| model only, batch 1, p50 | {bench['model_only_ms']['p50']:.1f} ms | – | – |")
    L.append(f"| end to end / model only | {bench['e2e_over_model']:.2f} | "
             f"{' | '.join(tgt('e2e_over_model'))} |")
    ceil = ix.get("model_only_by_batch") or {}
    L.append(f"| indexing throughput (`mkt index build`'s loop, batch {ix['batch']}, decoding "
             f"one batch ahead) | {ix['photos_per_s']:.0f} photos/s | "
             f"{' | '.join(tgt('indexing_photos_per_s'))} |")
    L.append("| model-only ceiling by batch (" + ", ".join(ceil) + ") | "
             + " / ".join(f"{v:.0f}" for v in ceil.values()) + " photos/s | – | – |")
    L.append(f"| 12 MP phone JPEG end to end, p50 (draft decode alone {ph['decode_ms']['p50']:.1f}"
             f" ms; a full decode {ph['decode_full_ms']['p50']:.0f} ms) | "
             f"{ph['e2e_ms']['p50']:.1f} ms | {' | '.join(tgt('phone_12mp_e2e_p50_ms'))} |")
    L.append(f"| cold `mkt classify` as a process, median (start-up caches off: "
             f"{_f(cs.get('no_cache_median_s'), 2)} s; python alone "
             f"{cs['python_startup_s']:.2f} s, `import mkt.cli` {cs['import_mkt_cli_s']:.2f} s) | "
             f"{cs['median_s']:.2f} s | {' | '.join(tgt('cold_start_median_s'))} |")
    L.append(f"| peak RSS of that process | {_f(cs.get('peak_rss_mb'))} MB | "
             f"{' | '.join(tgt('classify_peak_rss_mb'))} |")
    L.append("| `mkt serve` idle RSS (model + index loaded) | "
             + (f"{serve['idle_rss_mb']:.0f} MB" if "idle_rss_mb" in serve else
                f"not measured ({serve.get('skipped')})") + " | – | – |")
    if venv:
        L.append(f"| base install: site-packages of a fresh venv (`pip install .`) | "
                 f"{venv['site_packages_mb']:.0f} MB ({venv['without_pip_setuptools_mb']:.0f} "
                 f"without pip/setuptools; mkt itself {venv.get('mkt_own_mb', '?')} MB) | – | – |")
        L.append(f"| installed but never imported by the runtime's commands | "
                 f"{venv.get('installed_but_not_imported_mb', '?')} MB | 0 | "
                 f"{_met(venv.get('installed_but_not_imported_mb', 1) == 0)} |")
    L.append("")
    if cmp and cmp.get("models"):
        md = cmp["models"]
        cm = cmp["machine"]
        L += [f"`python {' '.join(cmp['command'].split()[1:])}` ({cmp['seconds']:.0f} s; every "
              f"row interleaved on the same {md['photos']} photos, {md['threads']} threads; "
              f"**load average {cm.get('loadavg')} at start**; full tables "
              "[benchmarks/results/compare-core.md](benchmarks/results/compare-core.md)):", "",
              "| model | batch 1 p50 ms | batch 32 photos/s | x ResNet-50 torch (b1 / b32) |",
              "| --- | ---: | ---: | ---: |"]
        for r in md["rows"]:
            L.append(f"| {r['name']} | {r['batch1_ms']['p50']:.1f} | "
                     f"{r['batch32_photos_per_s']:.1f} | {r['speedup_b1_vs_resnet50_torch']} / "
                     f"{r['speedup_b32_vs_resnet50_torch']} |")
        e = md["mkt_e2e"]
        L += ["", "| end to end, batch 1, photo file in, answer out | p50 ms | mkt is x faster "
              "| target | met |", "| --- | ---: | ---: | --- | --- |",
              f"| mkt classify (int8, onnxruntime) | {e['classify_e2e_ms']['p50']:.1f} | 1.0 "
              "| – | – |"]
        ct = cmp.get("targets", {})
        for n, v in (e.get("torch_e2e_ms") or {}).items():
            arch = "resnet50" if "resnet50" in n else "efficientnet_lite0"
            x = ct.get(f"e2e_vs_{arch}_torch_e2e_speedup") or {}
            L.append(f"| {n} | {v['p50']:.1f} | {e['speedup_vs_torch_e2e'][n]} | "
                     f"{x.get('target', '–')} | {_met(x.get('met'))} |")
        par = md.get("openvino_parity") or {}
        if par.get("int8"):
            L += ["", f"OpenVINO {par['version'].split('-')[0]} against onnxruntime on the same "
                  f"photos: int8 top-1 agreement {par['int8']['top1_agreement_vs_onnxruntime']}, "
                  f"embedding cosine min {par['int8']['embedding_cosine_min']}; fp32 max logit "
                  f"difference {par['fp32']['max_abs_logit_diff']}; compiling the graph takes "
                  f"{par['int8']['compile_s']} s (int8) / {par['fp32']['compile_s']} s (fp32) "
                  "before the first photo (cached after the first run)."]
    L.append("")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not current")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = ap.parse_args(argv)
    bench = _load("bench.json")
    if bench is None or "targets" not in bench:
        print("benchmarks/results/bench.json missing: run `mkt bench --out "
              "benchmarks/results/bench.json` first", file=sys.stderr)
        return 2
    body = render(bench, _load("compare-core.json"), _load("venv_size.json"))
    text = args.readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        print(f"{args.readme}: no {BEGIN} ... {END} section", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{body}{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    args.readme.write_text(new, encoding="utf-8")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
