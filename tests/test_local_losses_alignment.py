"""The local-losses experiment's per-site gradient alignment: recorded at every
evaluation point, plotted per site, summarised in report.md."""

import csv
import io
import json

import numpy as np
import pytest
from experiments import local_losses
from experiments.local_losses import _report

from .test_local_losses_experiment import _PNG_MAGIC, _args, idx_dir  # noqa: F401


_TINY = ("--model", "mlp", "--width", "16", "--depth", "2", "--groups", "4")


def test_run_records_and_plots_alignment(idx_dir, tmp_path, fast_compile):  # noqa: F811
    out = tmp_path / "out"
    args = ("--methods", "lg-bp,lg-fg-a", "--epochs", "1", "--seeds", "1")
    args += ("--alignment-keys", "2")
    local_losses.main(_args(idx_dir, out, *args, arch=_TINY))
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(run["method"] for run in runs) == ["lg-bp", "lg-fg-a"]
    for run in runs:
        sites = run["alignment_sites"]
        assert sites == [{"block": 0, "site": 0}, {"block": 1, "site": 1}]
        assert [point["epoch"] for point in run["alignment"]] == [0, 1]
        for point in run["alignment"]:
            for which in ("objective", "end_to_end"):
                assert len(point[which]) == len(sites)
                # Cosines, up to float32 rounding.
                assert all(abs(value) <= 1 + 1e-5 for value in point[which])
            if run["method"] == "lg-bp":  # exact: the objective's own gradient
                assert point["objective"] == pytest.approx([1, 1], abs=1e-5)
    assert (out / "alignment.png").read_bytes()[:8] == _PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "## Which layer gets signal: gradient alignment" in report
    assert "| LG-BP | 1 | 1.00 / " in report
    assert "![alignment.png](alignment.png)" in report


def _record(method: str, seed: int, alignment: bool = True) -> dict:
    """A runs.jsonl record of a 2-epoch run with two sites (without an alignment
    record, as written before it existed, if not `alignment`)."""
    rng = np.random.default_rng(seed)
    record = {
        "method": method,
        "model": "mlp",
        "seed": seed,
        "test_acc": 0.9,
        "train_acc": 0.95,
        "test_loss": 0.3,
        "train_loss": 0.2,
        "wall_s": 1.0,
        "steps": 10,
        "diverged": False,
        "initial_test_acc": 0.1,
        "history": {"epoch": [1, 2], "test_acc": [0.8, 0.9], "time": [0.5, 1.0]},
    }
    if alignment:
        record["alignment_sites"] = [{"block": 0, "site": 0}, {"block": 1, "site": 1}]
        record["alignment"] = [
            {
                "epoch": epoch,
                "objective": rng.uniform(0.5, 1, 2).tolist(),
                "end_to_end": [0.25 + 0.5 * seed, 0.5],
            }
            for epoch in range(3)
        ]
    return record


def test_alignment_plot_and_section_from_records(tmp_path):
    runs = [_record("lg-fg-a", 0), _record("lg-fg-a", 1), _record("fg-a", 0, False)]
    _report.plot_alignment(runs, tmp_path / "alignment.png", "title")
    assert (tmp_path / "alignment.png").read_bytes()[:8] == _PNG_MAGIC
    section = "\n".join(_report.alignment_section(runs, num_train=1000))
    assert "256 training images" in section and "4 keys" in section
    assert "| method | epoch | block 0, site 0 | block 1, site 1 |" in section
    # Mean over the two seeds of the end-to-end cosine: (0.25 + 0.75) / 2.
    (row,) = [line for line in section.splitlines() if line.startswith("| LG-FG-A")]
    assert row.startswith("| LG-FG-A | 2 | ") and "/ 0.50 | " in row
    assert "| FG-A |" not in section  # no alignment record: left out


def test_no_alignment_record_no_figure_nor_section(tmp_path):
    runs = [_record("backprop", 0, False)]
    _report.plot_alignment(runs, tmp_path / "alignment.png", "title")
    assert not (tmp_path / "alignment.png").exists()
    assert _report.alignment_section(runs, num_train=1000) == []


def test_summary_tangents_column():
    """From the run's config; Gaussian for records from before the choice."""
    config = {"optimizer": "adam", "lr": 1e-3, "num_tangents": 1, "batch_size": 32}
    common = {"epochs": 2, "compile_s": 0.0, "dataset": {"name": "d"}}
    runs = [
        {**_record("fg-a", 0), **common, "config": config, "run_id": "old"},
        {
            **_record("lg-fg-a", 0),
            **common,
            "config": {**config, "tangents": "rademacher"},
            "run_id": "new",
        },
    ]
    rows = list(csv.DictReader(io.StringIO(_report.summary_csv(runs))))
    assert [(row["run_id"], row["tangents"]) for row in rows] == [
        ("old", "gaussian"),
        ("new", "rademacher"),
    ]
