"""`python -m experiments.estimators --quick` end to end, on small sizes."""

import json

from experiments import estimators


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
    # Orthogonal tangents and projection span the same subspace: equal cosines.
    by_key = {(r["checkpoint"], r["method"], r["K"]): r for r in quality["results"]}
    for (checkpoint, method, k), row in by_key.items():
        if method == "orthogonal":
            other = by_key[(checkpoint, "projection", k)]
            assert abs(row["cosine_mean"] - other["cosine_mean"]) < 1e-3
    training = json.loads((tmp_path / "training.json").read_text())
    reference = training["methods"]["backprop + adam (lr 0.001)"]
    assert reference["ratios_mean"] == 1.0
    assert (tmp_path / "quality.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0
    # Rerunning resumes from runs.jsonl instead of training again.
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    estimators.main(["--quick", "--out", str(tmp_path), "--part", "training"])
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == lines
