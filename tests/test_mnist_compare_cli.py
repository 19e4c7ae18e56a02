"""`python -m experiments.mnist_compare` as a user runs it: Ctrl-C in a real
subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .helpers import write_random_mnist


ROOT = Path(__file__).parents[1]


def test_ctrl_c_says_how_to_resume_and_keeps_finished_runs(tmp_path):
    write_random_mnist(tmp_path, train=128, test=50)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "experiments.mnist_compare", "--model", "logreg",
        "--data-dir", str(tmp_path), "--iterations", "100", "--eval-every", "50",
        "--seeds", "500", "--estimators", "backprop", "--optimizers", "sgd",
        "--lrs", "0.01", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:  # wait until the first run has finished
            if line.startswith("[2/500]") or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert 2 <= len(runs) < 500
    assert all(run["iteration"] == [50, 100] for run in runs)
