"""Seed- and learning-rate-batched training of a grid cell
(`mnist_compare._batched`): each member sees its own run's batches and tangents,
agrees with the run trained alone, and a diverging member is frozen without
touching the others."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from experiments import runner
from experiments.mnist_compare import _batched, _train

from fwdeqx import data

from .test_mnist_compare import _write_idx


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = _write_idx(tmp_path_factory.mktemp("idx"), train=256, test=100)
    return data.load_dataset("mnist", data_dir=folder)


def _configs(optimizer, estimator, members, iterations=200, eval_every=50):
    """One cell: `members` is a list of (lr, seed)."""
    shared = {"dataset": "mnist", "model": "logreg", "optimizer": optimizer,
              "estimator": estimator, "iterations": iterations,
              "eval_every": eval_every}  # fmt: skip
    return [_train.RunConfig(lr=lr, seed=seed, **shared) for lr, seed in members]


def _train_alone_and_batched(configs, dataset):
    alone = [_train.train_run(c, dataset) for c in configs]
    return alone, _batched.train_cell(configs, dataset)


def assert_same_run(batched, alone):
    """Same run up to float rounding (batched matmuls may round differently)."""
    assert batched["run_id"] == alone["run_id"]
    assert batched["diverged_at"] == alone["diverged_at"]
    assert batched["iteration"] == alone["iteration"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(batched[key], alone[key], rtol=1e-5, atol=1e-6)
    assert batched["initial_val_loss"] == alone["initial_val_loss"]


def test_members_see_exactly_their_runs_batches(dataset):
    configs = _configs("sgd", "fwd-gaussian", [(0.1, 0), (0.01, 1), (0.01, 0)], 120)
    chunks = _batched._member_chunks(configs, dataset)
    stacked = list(chunks)
    for column, config in enumerate(configs):
        alone = list(_train.run_chunks(config, dataset))
        assert len(alone) == len(stacked) == 3
        for (xs, ys), (bxs, bys) in zip(alone, stacked, strict=True):
            np.testing.assert_array_equal(bxs[:, column], xs)
            np.testing.assert_array_equal(bys[:, column], ys)


@pytest.mark.parametrize(
    "optimizer, estimator",
    [("sgd", "backprop"), ("sgd", "fwd-gaussian"), ("adam", "fwd-gaussian")],
)
def test_batched_cell_matches_runs_trained_alone(dataset, optimizer, estimator):
    """Two learning rates and two seeds in one batch, 200 steps. A member given
    another's tangents or batches would part from its run at the first step (the
    forward-gradient runs differ by O(1) between seeds). Adam with backprop is
    covered by the command-line test (test_mnist_compare)."""
    lrs = {"sgd": (0.05, 0.01), "adam": (0.01, 0.001)}[optimizer]
    members = [(lrs[0], 0), (lrs[1], 0), (lrs[0], 1)]
    alone, batched = _train_alone_and_batched(
        _configs(optimizer, estimator, members), dataset
    )
    for one_batched, one_alone in zip(batched, alone, strict=True):
        assert_same_run(one_batched, one_alone)
        assert one_batched["train_loss"][-1] < one_batched["train_loss"][0]
    assert batched[0]["train_loss"] != batched[2]["train_loss"]  # seeds differ


def test_diverged_member_is_marked_and_the_others_are_unharmed(dataset):
    """lr 1e6 diverges within a few steps; its batch-mate (same seed, so the same
    batches and tangents) trains on as if alone, with no NaN in its record."""
    configs = _configs("sgd", "fwd-gaussian", [(0.05, 0), (1e6, 0)])
    alone, batched = _train_alone_and_batched(configs, dataset)
    for one_batched, one_alone in zip(batched, alone, strict=True):
        assert_same_run(one_batched, one_alone)
    assert batched[1]["diverged"] and 1 <= batched[1]["diverged_at"] <= 50
    assert batched[1]["final_val_loss"] is None
    survivor = batched[0]
    assert not survivor["diverged"] and len(survivor["iteration"]) == 4
    assert all(np.isfinite(survivor["train_loss"] + survivor["val_loss"]))


def test_diverged_member_is_frozen_inside_a_chunk(dataset):
    """In the chunk where lr 1e6 blows up, its parameters stop at the last finite
    state (unfrozen they would be inf/NaN) and `alive` marks it."""
    configs = _configs("sgd", "fwd-gaussian", [(0.05, 0), (1e6, 0)], 20, 20)
    prepared = [_train.prepare(c, dataset, runner.Cache()) for c in configs]
    chunk = _batched.make_batched_chunk_fn(configs[0], prepared[0].static)
    xs, ys = next(_batched._member_chunks(configs, dataset))
    stack = runner.stack
    with jax.numpy_dtype_promotion("standard"):
        (params, _, alive, threshold), losses = chunk(
            (
                stack([p.training.carry[0] for p in prepared]),
                stack([p.training.carry[1] for p in prepared]),
                jnp.ones(2, bool),
                jnp.full(2, jnp.inf),
            ),
            (
                jnp.asarray([0.05, 1e6], jnp.float32),
                jnp.stack([p.training.consts for p in prepared]),
            ),
            xs,
            ys,
            jnp.int32(0),
        )
    assert alive.tolist() == [True, False]
    np.testing.assert_allclose(threshold, 10 * np.asarray(losses[0]), rtol=1e-6)
    for leaf in jax.tree.leaves(eqx.filter(params, eqx.is_inexact_array)):
        assert np.isfinite(np.asarray(leaf)).all()
    bad = np.asarray(losses[:, 1])
    assert not (np.isfinite(bad) & (bad <= threshold[1])).all()


def test_group_cells_keeps_grid_order_and_splits_large_cells():
    configs = [
        *_configs("sgd", "backprop", [(0.1, 0), (0.1, 1)]),
        *_configs("sgd", "fwd-gaussian", [(0.1, 0)]),
        *_configs("sgd", "backprop", [(0.01, 0), (0.01, 1)]),
    ]
    cells = _batched.group_cells(configs)
    assert [len(cell) for cell in cells] == [4, 1]
    assert [(c.lr, c.seed) for c in cells[0]] == [(0.1, 0), (0.1, 1), (0.01, 0),
                                                  (0.01, 1)]  # fmt: skip
    assert [len(cell) for cell in _batched.group_cells(configs, 3)] == [3, 1, 1]
    assert len(_batched.group_cells(configs, 1)) == 5
    with pytest.raises(ValueError, match="at least 1"):
        _batched.group_cells(configs, 0)
    with pytest.raises(ValueError, match="more than seed and lr"):
        _batched.train_cell(configs[:3], None)
    with pytest.raises(ValueError, match="no runs"):
        _batched.train_cell([], None)


def test_auto_batches_whole_cells_on_accelerators_only():
    assert _batched.auto_max_members("cpu") == 1
    assert _batched.auto_max_members("gpu") is None
