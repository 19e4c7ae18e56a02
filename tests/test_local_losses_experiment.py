"""The local-losses experiment end to end, on tiny generated IDX data."""

import csv
import dataclasses
import json
import os
import pickle
import stat

import numpy as np
import pytest
from experiments import local_losses, registry
from experiments.local_losses import _train

import fwdeqx
from fwdeqx.data._idx import write_idx

from .helpers import tree_allclose
from .test_mnist_compare import _fake_mnist_5k, offline  # noqa: F401 (fixture)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OUTPUTS = (
    "config.json",
    "runs.jsonl",
    "summary.csv",
    "report.md",
    "accuracy_vs_epoch.png",
    "accuracy_vs_time.png",
)


def _write_idx_dataset(folder, seed: int = 0, flip_label: bool = False):
    """256 training and 100 test images, learnable: a bright 7x7 block whose
    position encodes the label, plus noise."""
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", 256), ("t10k", 100)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        if flip_label and prefix == "train":
            labels[0] = (labels[0] + 1) % 10
        images = rng.integers(0, 60, (count, 28, 28), dtype=np.uint8)
        for index, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[index, 7 * row : 7 * row + 7, 7 * col : 7 * col + 7] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return _write_idx_dataset(tmp_path_factory.mktemp("idx"))


_MLP = ("--model", "mlp", "--width", "32", "--depth", "2", "--groups", "4")


def _args(idx_dir, out, *extra, arch=_MLP):
    return [
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(idx_dir),
        *arch,
        "--batch-size",
        "32",
        "--alignment-keys",  # off: tests/test_local_losses_alignment.py covers it
        "0",
        "--out",
        str(out),
        *extra,
    ]


def _read_runs(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(idx_dir, tmp_path_factory):
    """One full CLI run: backprop and LG-FG-A, 2 seeds, 2 epochs of 8 steps."""
    out = tmp_path_factory.mktemp("out")
    args = _args(
        idx_dir, out, "--methods", "backprop,lg-fg-a", "--epochs", "2", "--seeds", "2"
    )
    mask = os.umask(0o022)
    try:
        local_losses.main(args)
    finally:
        os.umask(mask)
    return out, args


def test_outputs_present_and_well_formed(finished):
    out, _ = finished
    for name in _OUTPUTS:
        path = out / name
        assert path.is_file(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
    for name in _OUTPUTS[-2:]:
        assert (out / name).read_bytes()[:8] == _PNG_MAGIC
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["name"] == "fashion-mnist"
    assert config["dataset"]["num_train"] == 256
    assert config["dataset"]["num_test"] == 100
    assert set(config["methods"]) == {"backprop", "lg-fg-a"}
    assert config["methods"]["lg-fg-a"]["objective"] == "LocalLoss"
    assert config["methods"]["backprop"]["lr"] > 0
    runs = _read_runs(out)
    assert len(runs) == 4
    for run in runs:
        assert run["history"]["epoch"] == [1, 2]
        assert run["steps"] == 16
        assert len(run["history"]["test_acc"]) == 2
        assert run["dataset"]["fingerprint"] == config["dataset"]["fingerprint"]
        # One scale for every method: about ln 10 per head at the start, not
        # the local objective's sum over its blocks (two here).
        assert all(0.5 < v < 4 for v in run["history"]["train_loss_per_head"])
        # Each block's head on the test split; the last one is the output's.
        head_losses = run["test_head_losses"]
        assert len(head_losses) == 2 and all(len(h) == 2 for h in head_losses)
        assert head_losses[-1][-1] == pytest.approx(run["test_loss"], rel=1e-4)
        assert run["alignment"] == []  # --alignment-keys 0


def test_summary_columns_and_ranges(finished):
    out, _ = finished
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    required = {"method", "model", "seed", "test_acc", "test_loss", "train_acc"}
    assert required | {"epochs", "wall_s"} <= set(rows[0])
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("backprop", "0"),
        ("backprop", "1"),
        ("lg-fg-a", "0"),
        ("lg-fg-a", "1"),
    ]
    for row in rows:
        assert row["model"] == "mlp"
        assert row["epochs"] == "2"
        assert 0.0 <= float(row["test_acc"]) <= 1.0
        assert 0.0 <= float(row["train_acc"]) <= 1.0
        assert float(row["test_loss"]) > 0
        assert float(row["wall_s"]) > 0
    backprop = [float(r["train_acc"]) for r in rows if r["method"] == "backprop"]
    assert min(backprop) > 0.3  # learnable data: far above chance (0.1)


def test_report_table(finished):
    out, _ = finished
    report = (out / "report.md").read_text()
    assert "Table 3" in report
    assert "| BP (end to end) |" in report
    assert "| LG-FG-A |" in report
    assert "±" in report  # two seeds: mean ± std
    assert "accuracy_vs_epoch.png" in report
    assert "experiments.local_losses" in report


def test_resume_skips_finished_runs(finished, monkeypatch, capsys):
    """A rerun trains nothing and leaves every output byte-identical."""
    out, args = finished
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(_train, "train_run", fail)
    local_losses.main(args)
    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(after) == sorted(before)
    assert [name for name in before if after[name] != before[name]] == []
    stdout = capsys.readouterr().out
    assert stdout.count("skipped") == 4
    assert "[1/4] backprop seed 0: already in runs.jsonl, skipped" in stdout


def test_resume_with_other_data_does_not_skip(tmp_path, capsys):
    """Same command, same folder, one training label changed: the run is redone."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write_idx_dataset(tmp_path / "a")
    second = _write_idx_dataset(tmp_path / "b", flip_label=True)
    common = ("--methods", "backprop", "--epochs", "1", "--seeds", "1")
    out = tmp_path / "out"
    local_losses.main(_args(first, out, *common))
    local_losses.main(_args(second, out, *common))
    runs = _read_runs(out)
    assert len(runs) == 2
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert "skipped" not in capsys.readouterr().out
    # The summary describes the data of the last command only.
    with (out / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--methods", "backprop,lg-fg-x"), "'lg-fg-x'"),
        (("--methods", "backprop,backprop"), "twice"),
        (("--lr", "nope=1e-3"), "METHOD=LR"),
        (("--lr", "backprop=-1"), "> 0"),
        (("--epochs", "0"), "--epochs must be a positive integer"),
        (("--model", "cnn", "--width", "8"), "--width does not apply"),
        (("--model", "mixer", "--channels", "8"), "--channels does not apply"),
        (("--model", "cnn", "--channels", "8,x"), "positive integers"),
        (("--width", "30", "--groups", "4"), "--groups 4 must divide"),
        (("--no-locations",), "--locations/--no-locations does not apply"),
        (("--tangents", "sobol"), "invalid choice: 'sobol'"),
        (("--alignment-keys", "-1"), "--alignment-keys -1: expected 0 (off)"),
    ],
)
def test_bad_input_is_a_clear_error(idx_dir, tmp_path, extra, message):
    with pytest.raises(SystemExit) as error:
        local_losses.main(_args(idx_dir, tmp_path / "out", *extra, arch=()))
    assert message in str(error.value)
    assert str(error.value).startswith("error: ")
    assert not (tmp_path / "out" / "runs.jsonl").exists()


def test_missing_data_dir_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as error:
        local_losses.main(_args(empty, tmp_path / "out", "--methods", "backprop"))
    assert "error:" in str(error.value)
    assert str(empty) in str(error.value)
    assert "missing" in str(error.value)  # what is missing, on one line
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # no empty output folder left behind


def test_interrupt_exits_130(idx_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_train, "train_run", interrupted)
    with pytest.raises(SystemExit) as error:
        local_losses.main(_args(idx_dir, tmp_path / "out", "--methods", "backprop"))
    assert error.value.code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_help_lists_defaults_and_presets(capsys):
    with pytest.raises(SystemExit) as error:
        local_losses.main(["--help"])
    assert error.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: quick)" in text
    assert "'quick' = MLP" in text
    assert "lg-fg-a" in text
    assert "backprop=0.001" in text


def test_one_seed_report_says_so(idx_dir, tmp_path):
    out = tmp_path / "out"
    local_losses.main(
        _args(idx_dir, out, "--methods", "backprop", "--epochs", "1", "--seeds", "1")
    )
    report = (out / "report.md").read_text()
    assert "One seed" in report
    table = [line for line in report.split("## Details")[0].splitlines() if "|" in line]
    assert table and not any("±" in line for line in table)


@pytest.mark.slow
def test_mixer_trains(idx_dir, tmp_path):
    """The LocalMixer through the whole CLI (the CNN shares every code path but the
    builder call, and compiles slowly)."""
    arch = ("--model", "mixer", "--width", "8", "--depth", "1", "--groups", "2")
    out = tmp_path / "out"
    local_losses.main(
        _args(idx_dir, out, "--methods", "lg-fg-a", "--epochs", "1", arch=arch)
    )
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == [arch[1]]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)


def test_tangents_choice_names_the_run_and_builds_the_estimator():
    """Gaussian tangents (the default) leave run ids as they were; Rademacher ones
    are named in the id and reach the forward estimators."""
    config = _train.RunConfig(
        dataset="d",
        data="i",
        model="cnn",
        arch=(("channels", (4, 8)), ("groups", 2), ("locations", True)),
        method="lg-fg-a",
        optimizer="adam",
        lr=1e-3,
        schedule="cosine",
        num_tangents=2,
        seed=0,
        epochs=1,
        batch_size=8,
    )
    assert "-cnn-c4x8-g2-loc1-lg-fg-a-k2-adam-" in config.run_id
    rademacher = dataclasses.replace(config, tangents="rademacher")
    assert "-lg-fg-a-k2-rademacher-adam-" in rademacher.run_id
    for method in ("fg-w", "fg-a", "lg-fg-w", "lg-fg-a"):
        _, estimator = registry.make_method(method, 2, "rademacher")
        assert isinstance(estimator.tangents, fwdeqx.Rademacher)
        assert estimator.num_tangents == 2
    with pytest.raises(ValueError, match="unknown tangents 'sobol'"):
        registry.make_method("lg-fg-a", 1, "sobol")


def test_learning_rates_default_per_model_and_flags_override():
    parse = lambda *argv: local_losses.resolve(
        local_losses.build_parser().parse_args(argv)
    )
    methods = ("--methods", "backprop,lg-fg-a")
    assert parse(*methods).lrs == {
        m: local_losses.LEARNING_RATES[m] for m in ("backprop", "lg-fg-a")
    }
    for model, lrs in local_losses.MODEL_LEARNING_RATES.items():
        settings = parse("--model", model, *methods, "--lr", "backprop=0.5")
        assert settings.lrs["lg-fg-a"] == lrs["lg-fg-a"]
        assert settings.lrs["backprop"] == 0.5
    assert parse(*methods).tangents == "rademacher"


def test_chunk_sizes():
    assert _train.chunk_sizes(937) == [188, 188, 187, 187, 187]
    assert _train.chunk_sizes(8) == [8]
    assert sum(_train.chunk_sizes(401)) == 401


def test_fallback_warning_is_one_clean_line(offline, monkeypatch, capsys):  # noqa: F811
    """Like mnist_compare (the runner's one path): `warning: ...` once on stderr,
    not a raw Python warning with its source line."""
    from fwdeqx.data import _datasets

    monkeypatch.setattr(_datasets, "find_mnist_5k", _fake_mnist_5k(offline))
    argv = ["--dataset", "mnist", *_MLP, "--batch-size", "32", "--methods",
            "backprop", "--epochs", "1", "--out", str(offline / "out")]  # fmt: skip
    local_losses.main(argv)
    err = capsys.readouterr().err
    assert err.count("warning: MNIST NOT FOUND") == 1
    assert "DatasetFallbackWarning" not in err and "load_dataset(" not in err
    config = json.loads((offline / "out" / "config.json").read_text())
    assert config["dataset"]["name"] == "mnist-5k"


def test_cifar10_mixer_on_colour_images(tmp_path):
    """`--dataset cifar10` builds the network for 3x32x32 inputs (here from small
    generated batches in the official format) and trains it."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, 16)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    out = tmp_path / "out"
    arch = ("--model", "mixer", "--width", "8", "--depth", "1", "--groups", "2")
    args = _args(folder.parent, out, "--methods", "lg-fg-a", "--epochs", "1", arch=arch)
    args[args.index("fashion-mnist")] = "cifar10"
    local_losses.main(args)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["name"] == "cifar10"
    assert config["dataset"]["num_train"] == 80
    (run,) = _read_runs(out)
    assert run["steps"] == 2 and 0.0 <= run["history"]["test_acc"][0] <= 1.0


def test_conv_chunks_run_step_by_step():
    """A model with convolutions trains in a Python loop of one jitted step (XLA's
    CPU convolutions are 7-8x slower inside a loop): the chunk equals the same
    steps called one by one, and does not depend on how the run is cut."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    from experiments import runner

    import fwdeqx
    import fwdeqx.local as fl

    model = fl.cnn(1, (4,), 3, key=jax.random.key(0), image_size=8)
    step = fwdeqx.make_step(fl.GlobalLoss(), optax.sgd(0.1), fwdeqx.Backprop())
    params, static = eqx.partition(model, eqx.is_array)
    chunk = runner.make_chunk_fn(step, static)
    assert isinstance(chunk, runner.SteppedChunk)
    mlp = fl.mlp(4, 8, 1, 3, key=jax.random.key(0))
    assert not isinstance(
        runner.make_chunk_fn(step, eqx.partition(mlp, eqx.is_array)[1]),
        runner.SteppedChunk,
    )
    xs = jax.random.normal(jax.random.key(1), (4, 2, 1, 8, 8))
    ys = jnp.zeros((4, 2), jnp.int32)
    key = jax.random.key(2)

    def run(cuts):
        # Copies: a chunk donates (deletes) the carry it is given.
        carry = jax.tree.map(jnp.copy, (params, step.init(model)))
        losses, start = [], 0
        for size in cuts:
            args = (carry, key, xs[start : start + size], ys[start : start + size])
            executable = chunk.lower(*args, jnp.int32(start)).compile()
            carry, chunk_losses = executable(*args, jnp.int32(start))
            losses.append(chunk_losses)
            start += size
        return carry, jnp.concatenate(losses)

    whole, cut = run([4]), run([2, 2])
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(cut), strict=True):
        assert jnp.array_equal(a, b)
    one_by_one, state, losses = model, step.init(model), []
    for i in range(4):
        step_key = jax.random.fold_in(key, i)
        one_by_one, state, loss = step(one_by_one, state, (xs[i], ys[i]), step_key)
        losses.append(loss)
    (got_params, _), got_losses = whole
    want_params = eqx.filter(one_by_one, eqx.is_array)
    assert tree_allclose(got_params, want_params, rtol=1e-5, atol=1e-6)
    assert jnp.allclose(got_losses, jnp.stack(losses), rtol=1e-5)
