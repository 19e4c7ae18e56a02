"""The MNIST comparison experiment end to end, on tiny generated IDX data."""

import csv
import json
import math

import numpy as np
import pytest
from experiments import _mnist_report, _registry, mnist_compare

from fwdeqx import data


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Learnable 28x28 images: a bright 7x7 block whose position encodes the label,
    plus noise."""
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[index, 7 * row : 7 * row + 7, 7 * col : 7 * col + 7] = 255
    return images


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 256), ("t10k", 100)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(rng, labels))
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def _args(idx_dir, out, *extra):
    return [
        "--model",
        "logreg",
        "--data-dir",
        str(idx_dir),
        "--iterations",
        "30",
        "--eval-every",
        "10",
        "--seeds",
        "2",
        "--estimators",
        "backprop",
        "fwd-gaussian",
        "--optimizers",
        "sgd",
        "adam",
        "--out",
        str(out),
        *extra,
    ]


def _read_runs(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(idx_dir, tmp_path_factory):
    """One full CLI run: SGD at a sane lr and at a huge one (1e6, which must
    diverge), Adam at one lr; 2 estimators x 2 seeds each."""
    out = tmp_path_factory.mktemp("out")
    args = _args(idx_dir, out, "--lrs", "sgd=0.05", "sgd=1e6", "adam=0.01")
    mnist_compare.main(args)
    return out, args


def test_outputs_present_and_well_formed(finished):
    out, _ = finished
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["name"] == "mnist"
    assert config["dataset"]["num_train"] == 256
    assert config["dataset"]["num_val"] == 100
    assert config["iterations"] == 30
    assert config["environment"]["jax"]
    assert config["lrs"] == {"sgd": [0.05, 1e6], "adam": [0.01]}

    runs = _read_runs(out)
    assert len(runs) == 3 * 2 * 2
    assert len({run["run_id"] for run in runs}) == len(runs)
    for run in runs:
        assert run["dataset"] == "mnist"
        if run["diverged"]:
            continue
        assert run["iteration"] == [10, 20, 30]
        for key in ("train_loss", "val_loss", "val_accuracy", "time"):
            assert len(run[key]) == 3
            assert all(math.isfinite(value) for value in run[key])
        assert run["time"] == sorted(run["time"])
        assert run["final_val_loss"] == run["val_loss"][-1]
        assert 0.0 <= run["final_val_accuracy"] <= 1.0
    # One compile per configuration: the second seed reuses the first's.
    by_seed = {run["config"]["seed"]: run for run in runs if not run["diverged"]}
    assert by_seed[1]["compile_time"] == 0.0

    # Backprop with SGD learns the generated data.
    backprop = [
        run
        for run in runs
        if run["config"]["estimator"] == "backprop"
        and run["config"]["optimizer"] == "sgd"
        and run["config"]["lr"] == 0.05
    ]
    assert all(run["val_loss"][-1] < run["val_loss"][0] for run in backprop)

    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 2
    assert {row["estimator"] for row in rows} == {"backprop", "fwd-gaussian"}
    for name in ("loss_vs_iteration.png", "loss_vs_time.png", "divergence.png"):
        assert (out / name).read_bytes()[:8] == _PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "Dataset actually used: **mnist**" in report
    assert "| optimizer |" in report
    assert "![loss_vs_iteration.png](loss_vs_iteration.png)" in report
    assert "**Forward gradient with SGD converges like backprop" in report
    assert "**Forward gradient with Adam is much slower" in report
    assert "diverge (sgd, lr 1e+06):** this run supports it" in report


def test_divergence_marked_and_grid_continues(finished):
    out, _ = finished
    runs = _read_runs(out)
    huge = [run for run in runs if run["config"]["lr"] == 1e6]
    forward = [run for run in huge if run["config"]["estimator"] == "fwd-gaussian"]
    assert len(forward) == 2
    for run in forward:
        assert run["diverged"]
        assert 1 <= run["diverged_at"] <= 30
        assert run["final_val_loss"] is None
    # The Adam runs after the divergent ones still ran to the end.
    adam = [run for run in runs if run["config"]["optimizer"] == "adam"]
    assert len(adam) == 4 and not any(run["diverged"] for run in adam)
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    row = next(
        r for r in rows if r["estimator"] == "fwd-gaussian" and float(r["lr"]) == 1e6
    )
    assert row["diverged"] == "2"


def test_resume_skips_finished_runs(finished, capsys):
    """An interrupted grid (the last run lost): the rerun skips the 11 finished
    runs and redoes only the lost one, with the same numbers (same seed, same
    numbers)."""
    out, args = finished
    lines = (out / "runs.jsonl").read_text().splitlines(keepends=True)
    (out / "runs.jsonl").write_text("".join(lines[:-1]))
    capsys.readouterr()
    mnist_compare.main(args)
    stdout = capsys.readouterr().out
    assert stdout.count("already in runs.jsonl, skipped") == 11
    after = (out / "runs.jsonl").read_text().splitlines(keepends=True)
    assert after[:-1] == lines[:-1]
    rerun, original = json.loads(after[-1]), json.loads(lines[-1])
    assert rerun["run_id"] == original["run_id"]
    for key in ("train_loss", "val_loss", "val_accuracy", "iteration"):
        assert rerun[key] == original[key]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "resnet"], "invalid choice"),
        (["--iterations", "-5"], "--iterations must be a positive integer"),
        (["--iterations", "0"], "--iterations must be a positive integer"),
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--lrs", "0"], "learning rate must be > 0"),
        (["--lrs", "-0.001"], "learning rate must be > 0"),
        (["--lrs", "sgd=abc"], "is not a number"),
        (["--lrs", "rmsprop=0.1"], "names optimizer 'rmsprop'"),
        (["--estimators", "fwd-laplace"], "unknown estimator 'fwd-laplace'"),
        (["--estimators", "backprop-k2"], "no number of tangents"),
        (["--optimizers", "lbfgs"], "unknown optimizer 'lbfgs'"),
        (["--data-dir", "/nonexistent/fwdeqx"], "is not a directory"),
        (["--preset", "huge"], "invalid choice"),
    ],
)
def test_invalid_arguments_exit_with_one_line(extra, message, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_compare, "load_data", _no_work)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(["--out", str(out), *extra])
    text = str(info.value.code)
    assert text.startswith("error: ") and message in text
    assert "\n" not in text
    assert not out.exists()


def test_unwritable_out_exits_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_compare, "load_data", _no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(["--out", str(blocker / "out")])
    text = str(info.value.code)
    assert text.startswith("error: ") and "not writable" in text
    assert "\n" not in text


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the arguments were validated")


def test_registry_specs():
    assert _registry.parse_estimator_spec("fwd-gaussian") == ("fwd-gaussian", 1)
    assert _registry.parse_estimator_spec("fwd-gaussian-k4") == ("fwd-gaussian", 4)
    assert _registry.make_estimator("fwd-rademacher-k3").num_forward_passes == 3
    assert _registry.make_estimator("backprop").num_forward_passes == 1
    with pytest.raises(ValueError, match="K must be at least 1"):
        _registry.parse_estimator_spec("fwd-gaussian-k0")


def test_time_to_match_reached():
    # Backprop's lowest loss 0.5 is first reached at t=3 (again at t=4).
    t_b, t_f = _mnist_report.time_to_match(
        [1, 2, 3, 4, 5], [2.0, 1.0, 0.5, 0.5, 0.7], [2, 4, 6, 8], [1.5, 0.9, 0.5, 0.4]
    )
    assert (t_b, t_f) == (3, 6)


def test_time_to_match_never_reached():
    t_b, t_f = _mnist_report.time_to_match(
        [1, 2, 3], [1.0, 0.3, 0.4], [1, 2, 3, 4], [0.9, None, 0.31, float("nan")]
    )
    assert (t_b, t_f) == (2, None)


def test_time_to_match_without_finite_backprop():
    assert _mnist_report.time_to_match([1, 2], [None, None], [1], [0.1]) == (
        None,
        None,
    )


def _run(estimator, seed, times, val_losses, diverged=False):
    return {
        "config": {"optimizer": "sgd", "lr": 0.1, "estimator": estimator, "seed": seed},
        "iteration": [10 * (i + 1) for i in range(len(times))],
        "time": times,
        "val_loss": val_losses,
        "diverged": diverged,
        "diverged_at": 25 if diverged else None,
        "final_val_loss": None if diverged else val_losses[-1],
        "final_val_accuracy": None if diverged else 0.5,
    }


def test_summary_ratio_and_never():
    runs = [
        _run("backprop", 0, [1, 2], [1.0, 0.5]),
        _run("backprop", 1, [1, 2], [1.0, 0.4]),
        _run("fwd-gaussian", 0, [2, 4], [0.8, 0.5]),  # T_f/T_b = 4/2
        _run("fwd-gaussian", 1, [2, 4], [0.8, 0.5]),  # never reaches 0.4
        _run("fwd-rademacher", 0, [2, 4], [0.9, 0.8]),
        _run("fwd-rademacher", 1, [2, 4], [0.9, 0.8]),
    ]
    rows = {row["estimator"]: row for row in _mnist_report.summarise(runs)}
    assert rows["fwd-gaussian"]["T_f/T_b"] == 2.0
    assert rows["fwd-gaussian"]["reached"] == "1/2"
    assert rows["fwd-rademacher"]["T_f/T_b"] is None
    # Per iteration (record 2 = iteration 20): 0.5 vs 0.5 and 0.5 vs 0.4.
    assert rows["fwd-gaussian"]["common_iteration"] == 20
    assert rows["fwd-gaussian"]["val_gap_at_common_iteration"] == pytest.approx(
        (0.0 + 0.25) / 2
    )
    table = _mnist_report.text_table(list(rows.values()))
    assert "never" in table
    assert "2.00 (1/2 seeds)" in table
