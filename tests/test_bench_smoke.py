"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs in-process
and writes its report. No timing is asserted."""

import json

import pytest
from benchmarks import __main__ as bench


@pytest.mark.usefixtures("fast_compile")
def test_quick_benchmark_writes_report(tmp_path):
    code = bench.main(
        ["--quick", "--out", str(tmp_path), "--only", "steps", "memory", "quality"]
    )
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "versions", "env"} <= set(report["environment"])
    suites = report["suites"]
    for name in ("steps", "memory", "quality"):
        assert suites[name]["status"] == "ok", suites[name]

    paper = suites["steps"]["result"]["paper-mlp"]["timings"]
    assert paper["backprop-sgd"]["ratio_to_backprop"] == pytest.approx(1.0)
    for name in (
        "seed-recipe",
        "fwd-gaussian-k1",
        "fwd-gaussian_hash-k1",
        "fwd-lowrank-k4",
        "forward",
    ):
        assert paper[name]["median_ms"] > 0
    assert "ratio_to_k1" in paper["fwd-lowrank-k4"]
    assert "cnn" in suites["steps"]["result"]

    memory = suites["memory"]["result"]
    assert memory["paper-mlp"]["variants"]["backprop-sgd"]["temp_bytes"] >= 0
    assert set(memory["depth"]) >= {"2"}
    optimized = memory["memory_optimized"]["paper-mlp"]["variants"]
    assert optimized["fwd-lowrank-k1"]["temp_bytes"] >= 0

    quality = suites["quality"]["result"]["estimators"]
    assert quality["gaussian-k1"]["relative_mse"] > 0

    markdown = (tmp_path / "bench.md").read_text()
    assert "| fwd-lowrank-k1 |" in markdown
    assert "## memory" in markdown
    assert "memory-optimised CPU scheduler" in markdown


def test_missing_optional_suite_is_skipped(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(bench.importlib, "import_module", missing)
    result = bench.run_suite("distributed", quick=True)
    assert result["status"] == "skipped"
    with pytest.raises(ModuleNotFoundError):
        bench.run_suite("steps", quick=True)


def test_collective_bytes_parses_hlo():
    from benchmarks._hlo import collective_bytes

    hlo = "\n".join(
        [
            "  %a = f32[5]{0} all-reduce(f32[5]{0} %x), to_apply=%add",
            "  %b = (f32[8,6]{1,0}, f32[8]{0}) all-reduce(%p, %q), channel_id=1",
            "  %c = bf16[2,3]{1,0} all-reduce-start(%r), to_apply=%add",
            "  %d = bf16[2,3]{1,0} all-reduce-done(%c)",
            "  %e = f32[16]{0} all-gather(f32[4]{0} %s), dimensions={0}",
            "  %f = f32[1000]{0} add(%g, %h)",
        ]
    )
    totals = collective_bytes(hlo)
    assert totals["all-reduce"] == 5 * 4 + (48 + 8) * 4 + 6 * 2
    assert totals["all-gather"] == 16 * 4
    assert totals["reduce-scatter"] == totals["all-to-all"] == 0


@pytest.mark.usefixtures("fast_compile")
def test_batched_suite_reports_seeds_per_second(tmp_path):
    """The batched-vs-alone suite runs both ways on the same seeds and reports the
    rate ratio (its value is a measurement, not asserted)."""
    assert bench.main(["--quick", "--out", str(tmp_path), "--only", "batched"]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    suite = report["suites"]["batched"]
    assert suite["status"] == "ok", suite
    rows = suite["result"]["estimators"]
    assert set(rows) == {"backprop", "fwd-gaussian", "fwd-gaussian-hash"}
    for row in rows.values():
        rates = row["seed_steps_per_s"]
        assert rates["alone"] > 0 and rates["batched"] > 0
        assert row["batched_over_alone"] == pytest.approx(
            rates["batched"] / rates["alone"]
        )
    assert "batched / alone seeds per second" in (tmp_path / "bench.md").read_text()
