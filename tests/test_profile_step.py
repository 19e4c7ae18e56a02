"""Smoke test of `benchmarks.profile_step`: one profiled step of a tiny CNN is
attributed to operation categories. No timing is asserted beyond positivity."""

import jax
import pytest
from benchmarks import profile_step as ps

import fwdeqx.local as fl


def _tiny_cnn(key):
    return fl.cnn(1, 2, 3, key=key, image_size=4, locations=True)


def test_tiny_cnn_step_has_convolution_time():
    profile = ps.profile_step(
        _tiny_cnn,
        (4, 4),
        "backprop",
        batch_size=2,
        steps=1,
        warmup=1,
        num_classes=3,
        key=jax.random.key(0),
    )
    categories = profile["categories"]
    assert categories["convolution"]["ms"] > 0
    assert sum(c["share"] for c in categories.values()) == pytest.approx(1.0)
    assert profile["xla_ms"] > 0 and profile["wall_ms"] > 0
    assert "convolution" in ps.format_profile("tiny", "backprop", profile)


def test_categories_from_hlo_metadata():
    hlo = "\n".join(
        [
            "%pool_sum (a: f32[], b: f32[]) -> f32[] {",
            "  ROOT %add.1 = f32[] add(%a, %b)",
            "}",
            "%pool_max (a: f32[], b: f32[]) -> f32[] {",
            "  ROOT %max.1 = f32[] maximum(%a, %b)",
            "}",
            "ENTRY %main (p: f32[8]) -> f32[8] {",
            "  %c = f32[8] convolution(%p),"
            ' metadata={op_name="jit(f)/conv_general_dilated"}',
            "  %i = s32[8] iota(), iota_dimension=0",
            "  %w = f32[4] reduce-window(%c, %i), window={size=2}, to_apply=%pool_max",
            "  %s = f32[4] reduce-window(%c), window={size=2}, to_apply=%pool_sum",
            "  ROOT %t = f32[8] add(%c, %c)",
            "}",
        ]
    )
    categories = ps.instruction_categories(hlo)
    assert categories["c"] == "convolution"
    assert categories["w"] == "max pooling"
    assert categories["i"] == "max pooling"  # inferred from its user
    assert categories["s"] == ps.OTHER
    assert categories["t"] == ps.OTHER


def test_only_leaf_op_events_are_counted():
    def event(name, ts, dur, tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    events = [
        event("while.1", 0, 100),  # encloses c: not counted on top of it
        event("c", 10, 30),
        event("t", 50, 20, tid=2),  # overlaps the while on another thread
        event("ThunkExecutor::Execute", 0, 200),  # not an instruction
    ]
    categories = {"while.1": ps.OTHER, "c": "convolution", "t": ps.OTHER}
    totals = ps.leaf_op_microseconds(events, categories)
    assert totals == {"convolution": 30.0, ps.OTHER: 20.0}


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        ps.profile_step(_tiny_cnn, (4, 4), "nope")
