"""`mkt bench --json`: runs briefly on the test bundle and reports every figure, well formed.

No timing assertions: only that the fields exist, are positive, and percentiles are ordered.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mkt.cli import app


@pytest.fixture(scope="module")
def bench_result(bundle_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    res = CliRunner().invoke(app, [
        "bench", "--json", "--bundle", str(bundle_dir), "--repeats", "1", "--warmup", "0",
        "--cold-runs", "1", "--index-photos", "16", "--max-photos", "8", "--threads", "1",
        "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, "--json prints exactly one JSON object"
    result = json.loads(lines[0])
    assert json.loads(out.read_text()) == result
    return result


def _percentiles_ok(d: dict) -> None:
    for key in ("p50", "p95", "p99", "mean", "min", "max", "n"):
        assert key in d
        assert d[key] > 0, (key, d)
    assert d["min"] <= d["p50"] <= d["p95"] <= d["p99"] <= d["max"]


def test_machine_and_settings(bench_result):
    m = bench_result["machine"]
    assert isinstance(m["model"], str) and m["model"]
    assert m["logical_cores"] >= 1 and m["usable_cores"] >= 1
    s = bench_result["settings"]
    assert s["threads"] == 1 and s["repeats"] == 1 and 1 <= s["photos"] <= 8
    assert bench_result["bundle"]["model_id"]
    assert bench_result["versions"]["onnxruntime"]


def test_latencies(bench_result):
    for key in ("classify_e2e_ms", "decode_ms", "model_only_ms"):
        _percentiles_ok(bench_result[key])
    assert bench_result["e2e_over_model"] > 0


def test_indexing(bench_result):
    ix = bench_result["indexing"]
    assert ix["batch"] == 32 and ix["photos"] >= 32
    for key in ("index_loop", "embed", "pipelined", "model_only", "decode_only"):
        assert ix[key]["photos_per_s"] > 0
        assert ix[key]["median_s"] > 0
    assert ix["photos_per_s"] == ix["index_loop"]["photos_per_s"]  # what `mkt index build` runs
    assert ix["best"] in ("index_loop", "embed", "pipelined")


def test_phone_jpeg(bench_result):
    ph = bench_result["phone_12mp"]
    assert (ph["width"], ph["height"]) == (4000, 3000)
    assert ph["bytes"] > 500_000
    for key in ("e2e_ms", "decode_ms", "decode_full_ms"):
        _percentiles_ok(ph[key])


def test_cold_start_and_rss(bench_result):
    cs = bench_result["cold_start"]
    assert cs["exit_code"] == 0, cs
    assert cs["median_s"] > 0 and cs["min_s"] <= cs["median_s"]
    assert cs["python_startup_s"] > 0 and cs["import_mkt_cli_s"] > 0
    rss = bench_result["peak_rss_mb"]
    assert rss["bench_process"] > 0
    if rss["classify_process"] is not None:  # VmHWM: Linux only
        assert rss["classify_process"] > 0
    assert cs["no_cache_median_s"] > 0  # the same command with the start-up caches off
    serve = bench_result["serve_idle"]
    assert "skipped" in serve or serve["idle_rss_mb"] > 0
    ix = bench_result["indexing"]
    assert set(ix["model_only_by_batch"]) == {"b1", "b8", "b32", "b64"}
    assert ix["ceiling_photos_per_s"] == max(ix["model_only_by_batch"].values())


def test_targets_reported(bench_result):
    t = bench_result["targets"]
    assert set(t) >= {"e2e_over_model", "phone_12mp_e2e_p50_ms", "cold_start_median_s",
                      "indexing_photos_per_s"}
    if bench_result["peak_rss_mb"]["classify_process"] is not None:
        assert t["classify_peak_rss_mb"]["value"] > 0
    assert t["indexing_photos_per_s"]["model_only_ceiling"] > 0
    for v in t.values():
        assert isinstance(v["met"], bool) and v["value"] > 0


def test_bench_text_output(bundle_dir):
    res = CliRunner().invoke(app, [
        "bench", "--bundle", str(bundle_dir), "--repeats", "1", "--warmup", "0",
        "--cold-runs", "1", "--index-photos", "8", "--max-photos", "2", "--threads", "1",
    ])
    assert res.exit_code == 0, res.output
    assert "classify end to end" in res.stdout and "targets" in res.stdout


def test_bench_bad_photos_dir(bundle_dir, tmp_path):
    res = CliRunner().invoke(app, ["bench", "--bundle", str(bundle_dir), "--photos",
                                   str(tmp_path), "--json"])
    assert res.exit_code == 2
    assert "no photos" in res.output


def test_bench_needs_no_checkout():
    """The packaged examples, or photos given: never tests/fixtures or PYTHONPATH tricks."""
    from pathlib import Path

    import mkt.runtime.bench as B

    src = Path(B.__file__).read_text()
    assert "tests" not in src.replace("tests/", "") or "fixtures" not in src
    assert "PYTHONPATH" not in src and "fixtures" not in src
    assert B.default_photo_dirs() == [Path(B.__file__).resolve().parent.parent / "assets" /
                                      "examples"]
    assert not hasattr(B, "bench_decode") and not hasattr(B, "bench_model_only")


def test_bench_quick_reports_progress_on_stderr(bundle_dir):
    """--quick: the short settings, progress lines on stderr (also with --json, whose stdout
    stays one JSON object)."""
    import time

    from mkt.runtime.bench import QUICK

    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["bench", "--quick", "--json", "--bundle", str(bundle_dir),
                                   "--threads", "1"])
    wall = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    (line,) = [x for x in res.stdout.splitlines() if x.strip()]
    r = json.loads(line)
    s = r["settings"]
    assert s["quick"] is True
    assert (s["repeats"], s["warmup"], s["cold_runs"], s["index_repeats"]) == (
        QUICK["repeats"], QUICK["warmup"], QUICK["cold_runs"], QUICK["index_repeats"])
    assert r["indexing"]["photos"] == max(32, QUICK["index_photos"])
    progress = res.stderr.splitlines()
    assert len(progress) >= 5 and all(p.startswith("mkt: bench: [") for p in progress)
    for stage in ("latency", "indexing", "12 MP", "cold start", "done"):
        assert any(stage in p for p in progress), stage
    assert wall < 120  # under 20 s on an idle 2-core machine; this CPU may be shared


def test_bench_explicit_options_override_quick(bundle_dir):
    res = CliRunner().invoke(app, ["bench", "--quick", "--json", "--bundle", str(bundle_dir),
                                   "--repeats", "1", "--max-photos", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])["settings"]
    assert s["repeats"] == 1 and s["photos"] <= 2 and s["quick"] is True
