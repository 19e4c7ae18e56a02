"""`python -m experiments.estimators --quick` end to end, on small sizes."""

import json

import pytest
from experiments import estimators


@pytest.mark.usefixtures("fast_compile")
def test_quick_quality_and_training(tmp_path):
    estimators.main(["--quick", "--out", str(tmp_path)])
    quality = json.loads((tmp_path / "quality.json").read_text())
    methods = {row["method"] for row in quality["results"]}
    assert methods == set(estimators.QUALITY_METHODS)
    for row in quality["results"]:
        assert -1 <= row["cosine_mean"] <= 1
        assert row["relative_error_mean"] >= 0
        if row["method"] == "spsa":
            assert row["forward_passes"] == 2 * row["K"]
    # The rescaled projection only changes the projection's length: equal cosines.
    by_key = {(r["checkpoint"], r["method"], r["K"]): r for r in quality["results"]}
    for (checkpoint, method, k), row in by_key.items():
        if method == "projection-rescaled":
            other = by_key[(checkpoint, "projection", k)]
            assert abs(row["cosine_mean"] - other["cosine_mean"]) < 1e-3
    training = json.loads((tmp_path / "training.json").read_text())
    reference = training["methods"]["backprop + adam (lr 0.001)"]
    assert reference["ratios_mean"] == 1.0
    assert (tmp_path / "quality.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "| backprop + adam (lr 0.001) | 1 | 1 | 1.00 |" in report
    assert "![quality](quality.png)" in report
    # Rerunning resumes from runs.jsonl instead of training again.
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    estimators.main(["--quick", "--out", str(tmp_path), "--part", "training"])
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == lines


def _run(estimator, optimizer, times, losses):
    return {
        "config": {
            "estimator": estimator,
            "optimizer": optimizer,
            "lr": 1e-3,
            "seed": 0,
        },
        "time": times,
        "val_loss": losses,
        "iteration": [100 * (i + 1) for i in range(len(times))],
        "final_val_loss": losses[-1],
        "final_val_accuracy": 0.5,
        "diverged": False,
    }


def test_gap_closed_at_equal_wall_time():
    """At T_f = 10 s (forward + Adam's last time) forward + Adam is at 2.0 and
    backprop + Adam at 0.2 (its best, reached early); a method at 1.1 by then has
    closed half the gap. Losses after T_f do not count."""
    runs = [
        _run("backprop", "adam", [1.0, 2.0], [0.2, 0.3]),
        _run("fwd-gaussian", "adam", [5.0, 10.0], [2.2, 2.0]),
        _run("fwd-lowrank", "adam", [4.0, 9.0, 12.0], [1.5, 1.1, 0.1]),
    ]
    summary = estimators.summarise_training(runs)
    method = summary["fwd-lowrank + adam (lr 0.001)"]
    assert method["loss_at_T_f"] == [1.1]
    assert abs(method["gap_closed_at_T_f"][0] - 0.5) < 1e-12
    assert summary["fwd-gaussian + adam (lr 0.001)"]["gap_closed_at_T_f"] == [0.0]
    assert summary["backprop + adam (lr 0.001)"]["gap_closed_at_T_f"] == [1.0]
