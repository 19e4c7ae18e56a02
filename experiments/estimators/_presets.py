"""What the estimators experiment runs: the quality methods, and the sizes, runs and
learning rates of the full and `--quick` presets."""

import dataclasses


QUALITY_METHODS = (
    "mean",
    "projection",
    "projection-rescaled",
    "projection-lowrank",
    "spsa",
)
MNIST_5K_VALIDATION = 1000
DESIGN_OPTIMIZERS = ("adam", "fwd-adam", "fwd-adam-global")


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one run of the experiment: the MLP width and the quality grid (K,
    checkpoints, draws, minibatch), and the training runs, length and seeds."""

    width: int
    quality_ks: tuple[int, ...]
    quality_checkpoints: tuple[int, ...]
    quality_repeats: int
    quality_batch: int
    training_model: str
    # (estimator, optimizer, lr); lr None: the optimizer's best lr in the design runs
    training_runs: tuple[tuple[str, str, float | None], ...]
    iterations: int
    eval_every: int
    seeds: int
    # (optimizer, lr) pairs for forward gradient (Gaussian, K = 1), seed 0.
    design: tuple[tuple[str, float], ...] = (
        *((name, lr) for name in DESIGN_OPTIMIZERS for lr in (1e-4, 3e-4, 1e-3)),
        ("adam", 3e-3),
        ("fwd-adam", 3e-3),
    )


# Learning rates: backprop + Adam at 1e-3 (Adam's usual scale), backprop + SGD at
# 5e-2; every forward method at 1e-3, the best of {1e-4, 3e-4, 1e-3} for forward
# gradient with Adam, fwd_adam (leaf) and fwd_adam (global) in the design runs (seed
# 0, lowest final validation loss; `best_design_lrs` reads them; `None` as lr uses it).
# The projection on 16 rank-1 tangents also runs at 3e-3: its estimate is less noisy
# than a single forward gradient's, so it may take a larger step.
FULL = Preset(
    width=1024,
    quality_ks=(1, 4, 16, 64),
    quality_checkpoints=(0, 200, 1000),
    quality_repeats=4,
    quality_batch=256,
    training_model="mlp",
    training_runs=(
        ("backprop", "adam", 1e-3),
        ("backprop", "sgd", 5e-2),
        ("fwd-gaussian", "adam", 1e-3),
        ("fwd-gaussian", "fwd-adam", 1e-3),
        ("fwd-projection-k4", "adam", 1e-3),
        ("spsa", "adam", 1e-3),
        ("fwd-projection-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k64", "adam", 1e-3),
        ("fwd-lowrank-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k16", "adam", 3e-3),
    ),
    iterations=1500,
    eval_every=100,
    seeds=5,
)
QUICK = Preset(
    width=32,
    quality_ks=(1, 4),
    quality_checkpoints=(0, 5),
    quality_repeats=2,
    quality_batch=64,
    training_model="logreg",
    training_runs=(
        ("backprop", "adam", 1e-3),
        ("fwd-projection-k4", "fwd-adam", 1e-3),
        ("spsa", "adam", 1e-3),
    ),
    iterations=20,
    eval_every=10,
    seeds=1,
)
