"""`python -m benchmarks [--quick] [--out DIR] [--only SUITE ...]`.

Runs every suite, prints the machine and settings, and writes `bench.json` and
`bench.md` to `results/bench/` (`results/bench/quick/` with `--quick`).
"""

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ._report import render_markdown
from ._timing import environment


SUITES = (
    "steps", "memory", "quality", "pipeline", "loop", "distributed", "local",
    "batched",
)  # fmt: skip
# Suites owned by other benchmarks: skipped with a note when not (yet) present.
OPTIONAL = ("pipeline", "loop", "distributed", "local", "batched")


def run_suite(name: str, quick: bool) -> dict[str, Any]:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as error:
        if name in OPTIONAL and error.name == f"benchmarks.{name}":
            print(f"[{name}] skipped: benchmarks/{name}.py is not present", flush=True)
            return {"status": "skipped", "note": f"benchmarks/{name}.py not present"}
        raise
    start = time.perf_counter()
    try:
        result = module.run(quick=quick)
    except Exception as error:  # one broken suite must not hide the others
        traceback.print_exc()
        return {"status": "error", "error": f"{type(error).__name__}: {error}"}
    return {
        "status": "ok",
        "seconds": time.perf_counter() - start,
        "result": result,
    }


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="few steps on small models (smoke run)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument(
        "--only", nargs="+", choices=SUITES, default=None, help="suites to run"
    )
    args = parser.parse_args(argv)
    out = args.out or Path("results/bench/quick" if args.quick else "results/bench")
    out.mkdir(parents=True, exist_ok=True)

    env = environment()
    print(json.dumps(env, indent=2), flush=True)
    report: dict[str, Any] = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": env,
        "suites": {},
    }
    for name in args.only or SUITES:
        report["suites"][name] = run_suite(name, args.quick)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    _write(out / "bench.json", json.dumps(report, indent=2, default=str) + "\n")
    _write(out / "bench.md", render_markdown(report))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}", flush=True)
    failed = [n for n, s in report["suites"].items() if s["status"] == "error"]
    if failed:
        print(f"suites that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
