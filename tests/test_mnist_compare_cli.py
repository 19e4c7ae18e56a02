"""`python -m experiments.mnist_compare` as a user runs it: Ctrl-C in a real
subprocess."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .helpers import write_random_mnist


ROOT = Path(__file__).parents[1]


# Runs the experiment as `python -m` does, with Ctrl-C's KeyboardInterrupt: a test run
# started in the background (`cmd &`, as CI scripts may) passes SIGINT on ignored, and
# Python then installs no KeyboardInterrupt handler.
AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'experiments.mnist_compare'; "
    "runpy.run_module('experiments.mnist_compare', run_name='__main__', "
    "alter_sys=True)"
)


def test_ctrl_c_says_how_to_resume_and_keeps_finished_runs(tmp_path):
    """Ctrl-C after the second run: exit status 130, a one-line message, and the
    finished runs kept. Each run has 2,000 steps, so that the 500 runs cannot all
    finish before the signal arrives even on a fast machine; every wait is
    bounded."""
    write_random_mnist(tmp_path, train=128, test=50)
    out = tmp_path / "out"
    command = [
        sys.executable, "-c", AS_IN_A_TERMINAL, "--model", "logreg",
        "--data-dir", str(tmp_path), "--iterations", "2000", "--eval-every", "1000",
        "--seeds", "500", "--estimators", "backprop", "--optimizers", "sgd",
        "--lrs", "0.01", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / "stderr.txt", "w") as stderr_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr_file,
            text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(
                target=lambda: [lines.put(line) for line in process.stdout or ()],
                daemon=True,
            )
            reader.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the second run has finished
                try:
                    if lines.get(timeout=1).startswith("[2/500]"):
                        break
                except queue.Empty:
                    pass
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        finally:
            process.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert 2 <= len(runs) < 500
    assert all(run["iteration"] == [1000, 2000] for run in runs)
