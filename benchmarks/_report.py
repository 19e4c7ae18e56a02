"""Markdown rendering of the benchmark report."""

import json
from typing import Any


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f}"


def _steps_tables(result: dict[str, Any]) -> list[str]:
    lines = []
    for setup_name, setup in result.items():
        lines += [
            f"### {setup_name}: {setup['description']}",
            "",
            f"{setup['num_params']:,} parameters; median and IQR over "
            f"{setup['rounds']} round-robin rounds of {setup.get('block', 1)} "
            f"consecutive steps per variant, after {setup['warmup_rounds']} "
            "warm-up rounds.",
            "",
            "| variant | ms/step (median) | IQR ms | / backprop SGD | / K=1 step |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, t in setup["timings"].items():
            k1 = f"{t['ratio_to_k1']:.2f}" if "ratio_to_k1" in t else ""
            lines.append(
                f"| {name} | {t['median_ms']:.3f} | {t['iqr_ms']:.3f} | "
                f"{t['ratio_to_backprop']:.2f} | {k1} |"
            )
        lines.append("")
    return lines


def _memory_tables(result: dict[str, Any]) -> list[str]:
    lines = _memory_section(result, "default CPU scheduler")
    if "memory_optimized" in result:
        lines += _memory_section(
            result["memory_optimized"], "memory-optimised CPU scheduler"
        )
    return lines


def _memory_section(result: dict[str, Any], scheduler: str) -> list[str]:
    paper = result["paper-mlp"]
    variants = list(paper["variants"])
    lines = [
        f"### XLA temp memory, {scheduler}, {paper['description']}",
        "",
        "| variant | temp MiB | / backprop |",
        "|---|---:|---:|",
    ]
    for name, row in paper["variants"].items():
        lines.append(
            f"| {name} | {_mib(row['temp_bytes'])} | "
            f"{row['temp_ratio_to_backprop']:.2f} |"
        )
    lines += ["", f"### Temp memory (MiB) against depth, {scheduler}", ""]
    lines.append("| depth | params | " + " | ".join(variants) + " |")
    lines.append("|---|---:|" + "---:|" * len(variants))
    for depth, table in result["depth"].items():
        cells = [
            f"{_mib(table['variants'][v]['temp_bytes'])} "
            f"({table['variants'][v]['temp_ratio_to_backprop']:.2f}x)"
            for v in variants
        ]
        lines.append(
            f"| {depth} | {table['num_params']:,} | " + " | ".join(cells) + " |"
        )
    first = next(iter(result["depth"].values()), None)
    if first is not None:
        lines += [
            "",
            f"Depth rows: {first['description'].split(',')[1].strip()} "
            "and hidden width as in the description of each model.",
            "",
        ]
    return lines


def _quality_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"### Estimator quality, {result['description']} "
        f"(n = {result['num_params']:,})",
        "",
        "| estimator | E‖g − ∇f‖²/‖∇f‖² | ± s.e. | / n | theory | mean cosine |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["estimators"].items():
        theory = f"{row['theory']:.4g}" if row["theory"] is not None else "–"
        lines.append(
            f"| {name} | {row['relative_mse']:.4g} | {row['stderr']:.2g} | "
            f"{row['relative_mse_over_n']:.3f} | {theory} | {row['mean_cosine']:.2e} |"
        )
    lines.append("")
    return lines


def _local_tables(result: dict[str, Any]) -> list[str]:
    """fwdeqx.local step costs: one table per network, ratios to backprop."""
    lines = []
    for name, setup in result.items():
        lines += [
            f"### local: {name}, {setup['description']}",
            "",
            f"{setup['num_params']:,} parameters; median over {setup['rounds']} "
            f"round-robin rounds of {setup['block']} steps per variant.",
            "",
            "| method | ms/step (median) | IQR ms | / backprop |",
            "|---|---:|---:|---:|",
        ]
        for method, t in setup["timings"].items():
            lines.append(
                f"| {method} | {t['median_ms']:.3f} | {t['iqr_ms']:.3f} | "
                f"{t['ratio_to_backprop']:.2f} |"
            )
        lines.append("")
    return lines


def _batched_table(result: dict[str, Any]) -> list[str]:
    """Seeds per second, batched against one run at a time."""
    lines = [
        f"### batched: {result['seeds']} seeds of a {result['model']} cell (SGD, "
        f"batch {result['batch_size']}), chunks of {result['steps_per_chunk']} "
        f"steps, median of {result['rounds']} rounds",
        "",
        "| estimator | alone ms/seed-step | batched ms/seed-step | "
        "batched / alone seeds per second |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["estimators"].items():
        ms = row["ms_per_seed_step"]
        lines.append(
            f"| {name} | {ms['alone']:.2f} | {ms['batched']:.2f} | "
            f"{row['batched_over_alone']:.2f} |"
        )
    return [*lines, ""]


RENDERERS = {
    "steps": _steps_tables,
    "memory": _memory_tables,
    "quality": _quality_table,
    "local": _local_tables,
    "batched": _batched_table,
}


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# fwdeqx benchmarks" + (" (quick smoke run)" if report["quick"] else ""),
        "",
        f"- started {report['started']}, finished {report.get('finished')}",
        f"- machine: {env['cpu_model']}, {env['usable_cpus']} usable CPUs "
        f"({env['platform']}), load average at start {env['load_average']}",
        f"- {versions}; backend {env['jax_backend']}",
        f"- settings: {json.dumps({k: v for k, v in env['env'].items() if v})}",
        "",
    ]
    for name, suite in report["suites"].items():
        lines += [f"## {name}", ""]
        if suite["status"] != "ok":
            lines += [
                f"{suite['status']}: {suite.get('note') or suite.get('error')}",
                "",
            ]
            continue
        result = suite["result"]
        if name in RENDERERS:
            lines += RENDERERS[name](result)
        elif isinstance(result, dict) and isinstance(result.get("markdown"), str):
            lines += [result["markdown"], ""]
        else:
            text = json.dumps(result, indent=2, default=str)
            lines += ["```json", text, "```", ""]
    return "\n".join(lines) + "\n"
