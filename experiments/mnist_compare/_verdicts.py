"""The verdicts of `report.md`: whether the runs support each claim of the paper, or
"inconclusive" and why when the evidence is below the stated minimum."""

from typing import Any

from ._summary import BACKPROP, BLOWUP_FACTOR
from ._tables import ratio_text, seed_count


# The evidence a verdict on a claim needs; below it the report says
# "inconclusive" and why.
MIN_SEEDS = 2
"""Seeds a verdict needs (and that a ± needs: one seed has no spread)."""
MIN_LOSS_DROP = 0.1
"""How far (nats) backprop's validation loss must have fallen from its value at
initialisation (ln 10 ≈ 2.30 for 10 classes) at the compared iteration: a comparison
of two runs that have barely trained says nothing about how they train."""
LIKE = 0.10
"""'Like backprop': validation loss within 10% of backprop's at the same iteration."""
MUCH_SLOWER = 0.10
"""'Much slower': final validation loss more than 10% above backprop's."""


def _is_forward(estimator: str) -> bool:
    return estimator.startswith("fwd-")


def _divergent(rows: list[dict[str, Any]], preset: dict[str, float]) -> set[tuple]:
    """(optimizer, lr) pairs meant to diverge (the preset's) or where every
    forward-gradient run diverged."""
    pairs = {(opt, lr) for opt, lr in preset.items()}
    for row in rows:
        if _is_forward(row["estimator"]) and row["diverged"] == row["seeds"]:
            pairs.add((row["optimizer"], row["lr"]))
    return pairs


def _by_configuration(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The rows by (optimizer, lr, estimator)."""
    return {(r["optimizer"], r["lr"], r["estimator"]): r for r in rows}


def _final_loss_pairs(
    rows: list[dict[str, Any]], optimizer: str, divergent: set[tuple]
) -> list[tuple[dict, dict]]:
    """(forward row, backprop row) at the same lr, outside the divergent lrs."""
    by_key = _by_configuration(rows)
    pairs = []
    for row in rows:
        if row["optimizer"] != optimizer or not _is_forward(row["estimator"]):
            continue
        if (optimizer, row["lr"]) in divergent or row["val_loss_mean"] is None:
            continue
        reference = by_key.get((optimizer, row["lr"], BACKPROP))
        if reference and reference["val_loss_mean"] is not None:
            pairs.append((row, reference))
    return pairs


def _too_little_training(drop: float | None, initial: float | None) -> str | None:
    """Why backprop's loss drop is no evidence, or `None` when it is."""
    if drop is None:
        return "no validation loss at initialisation recorded"
    if drop < MIN_LOSS_DROP:
        start = "" if initial is None else f" from {initial:.3f}"
        return (
            f"backprop's validation loss fell only {drop:.3f}{start}, less than "
            f"the {MIN_LOSS_DROP} needed"
        )
    return None


def _seed_comparison(entry: dict[str, Any]) -> str:
    if entry["iteration"] is None:
        return f"seed {entry['seed']}: no record before its blow-up"
    gap = entry["forward"] / entry["backprop"] - 1
    ahead = ", ahead" if gap < -LIKE else ""
    return (
        f"seed {entry['seed']} at iteration {entry['iteration']}: "
        f"{entry['forward']:.3f} vs backprop {entry['backprop']:.3f} "
        f"({100 * gap:+.1f}%{ahead})"
    )


def _per_iteration_part(row: dict[str, Any]) -> tuple[str, bool | str | None]:
    """(description, outcome) of one SGD lr. The outcome is `True` (like
    backprop), `False` (not), `None` (every run blew up before a comparable
    record: diverged) or why it is inconclusive. Each seed is judged at its own
    compared iteration; seeds are never averaged."""
    entries = row["per_seed"]
    text = f"{row['estimator']} at lr {row['lr']:g}: " + ", ".join(
        map(_seed_comparison, entries)
    )
    blowups = [e for e in entries if e["blowup"] is not None]
    if blowups:
        text += (
            "; then blew up ("
            + ", ".join(f"seed {e['seed']} at {e['blowup']}" for e in blowups)
            + f") and {row['diverged']}/{row['seeds']} runs diverged"
        )
    compared = [e for e in entries if e["iteration"] is not None]
    if not compared and blowups:
        return text, None
    if len(compared) < MIN_SEEDS:
        return text, f"{seed_count(len(compared))}, at least {MIN_SEEDS} needed"
    drops = [e["drop"] for e in compared]
    drop = None if None in drops else min(drops)
    why = _too_little_training(drop, row["initial_val_loss"])
    if why is not None:
        return text, why
    return text, all(e["forward"] <= (1 + LIKE) * e["backprop"] for e in compared)


def _verdict(claim: str, conclusive: list[tuple[str, bool]], parts: list[str],
             inconclusive: list[str], definition: str,
             diverged: tuple[str, ...] = ()) -> str:  # fmt: skip
    """'supports' / 'does not support' from the conclusive parts (all must agree
    to support), else 'inconclusive' with the reasons, else 'diverged' (every
    part's runs blew up before a comparable record)."""
    listed = "; ".join(parts)
    if not conclusive and not inconclusive:
        return (
            f"**{claim}:** diverged: no run has a record before its blow-up "
            f"({listed}; {definition})."
        )
    if not conclusive:
        return (
            f"**{claim}:** inconclusive ({'; '.join(inconclusive)}). Measured: "
            f"{listed}; {definition}."
        )
    verdict = "supports" if all(ok for _, ok in conclusive) else "does not support"
    skipped = (
        f" Not counted, too little evidence: {'; '.join(inconclusive)}."
        if inconclusive
        else ""
    )
    if diverged:
        skipped += (
            f" Not counted, diverged before a comparable record: {'; '.join(diverged)}."
        )
    return f"**{claim}:** this run {verdict} it ({listed}; {definition}).{skipped}"


def claims(rows: list[dict[str, Any]], divergent_lrs: dict[str, float]) -> list[str]:
    """One sentence per claim of the paper: whether these runs support it, or
    "inconclusive" and why when the evidence is below the stated minimum
    (`MIN_SEEDS` seeds, backprop's validation loss `MIN_LOSS_DROP` below its
    initial value)."""
    divergent = _divergent(rows, divergent_lrs)
    preset_divergent = set(divergent_lrs.items())
    sentences = []

    claim = "Forward gradient with SGD converges like backprop per iteration"
    sgd = [
        row
        for row in rows
        if row["optimizer"] == "sgd"
        and _is_forward(row["estimator"])
        and ("sgd", row["lr"]) not in preset_divergent
        and row["per_seed"]
    ]
    if sgd:
        parts, conclusive, inconclusive, diverged = [], [], [], []
        for row in sgd:
            text, outcome = _per_iteration_part(row)
            parts.append(text)
            if outcome is None:
                diverged.append(f"lr {row['lr']:g}")
            elif isinstance(outcome, bool):
                conclusive.append((text, outcome))
            else:
                inconclusive.append(f"lr {row['lr']:g}: {outcome}")
        sentences.append(
            _verdict(
                claim,
                conclusive,
                parts,
                inconclusive,
                f"'like' = every seed's validation loss at most {LIKE:.0%} above "
                "backprop's (below counts: not slower), each seed compared at the "
                "last record both runs reached before either blew up (a diverged "
                f"run blows up at its first validation loss above {BLOWUP_FACTOR}x "
                "the lowest before it, else where it diverged)",
                tuple(diverged),
            )
        )
    elif not any(row["optimizer"] == "sgd" for row in rows):
        sentences.append(f"**{claim}:** not tested (SGD was not run).")
    else:
        sentences.append(
            f"**{claim}:** not tested (no SGD learning rate with both estimators "
            "recorded outside the divergent ones)."
        )

    claim = "Forward gradient with Adam is much slower than backprop with Adam"
    adam = _final_loss_pairs(rows, "adam", divergent)
    if adam:
        parts, conclusive, inconclusive = [], [], []
        for row, ref in adam:
            finals = [
                (e["seed"], e["final_forward"], e["final_backprop"])
                for e in row["per_seed"]
            ]
            seeds_text = ", ".join(
                f"seed {seed} {forward:.3f} vs {backprop:.3f}"
                for seed, forward, backprop in finals
                if None not in (forward, backprop)
            )
            text = (
                f"{row['estimator']} at lr {row['lr']:g}: final {seeds_text}; mean "
                f"{row['val_loss_mean']:.3f} vs backprop {ref['val_loss_mean']:.3f}, "
                f"T_f/T_b {ratio_text(row)}"
            )
            parts.append(text)
            seeds = min(row["seeds"] - row["diverged"], ref["seeds"] - ref["diverged"])
            initial = ref["initial_val_loss"]
            drop = None if initial is None else initial - ref["val_loss_mean"]
            why = (
                f"{seed_count(seeds)} finished, at least {MIN_SEEDS} needed"
                if seeds < MIN_SEEDS
                else _too_little_training(drop, initial)
            )
            if why is None:
                slower = (
                    row["val_loss_mean"] - ref["val_loss_mean"]
                    > MUCH_SLOWER * ref["val_loss_mean"]
                )
                conclusive.append((text, slower))
            else:
                inconclusive.append(f"lr {row['lr']:g}: {why}")
        sentences.append(
            _verdict(
                claim,
                conclusive,
                parts,
                inconclusive,
                f"'much slower' = final validation loss more than {MUCH_SLOWER:.0%} "
                "above backprop's",
            )
        )
    elif not any(row["optimizer"] == "adam" for row in rows):
        sentences.append(
            f"**{claim}:** not tested (Adam was not run: add `adam` to `--optimizers`)."
        )
    else:
        sentences.append(
            f"**{claim}:** not tested (no Adam learning rate where both estimators "
            "finished without diverging)."
        )

    tested = False
    for optimizer, lr in sorted(divergent):
        forward = [
            row
            for row in rows
            if row["optimizer"] == optimizer
            and row["lr"] == lr
            and _is_forward(row["estimator"])
        ]
        if not forward:
            continue
        tested = True
        counts = ", ".join(
            f"{row['estimator']} {row['diverged']}/{row['seeds']} runs diverged"
            + (f" ({row['diverged_seeds']})" if row["diverged"] else "")
            for row in forward
        )
        reference = _by_configuration(rows).get((optimizer, lr, BACKPROP))
        claim = (
            "A larger learning rate makes forward gradient diverge "
            f"({optimizer}, lr {lr:g})"
        )
        seeds = min(row["seeds"] for row in forward)
        if reference is None:
            why = "backprop was not run at this lr, so the lr alone may be to blame"
        elif reference["diverged"]:
            why = (
                f"backprop diverged too ({reference['diverged']}/"
                f"{reference['seeds']}), so the lr alone is to blame"
            )
        elif seeds < MIN_SEEDS:
            why = f"{seed_count(seeds)}, at least {MIN_SEEDS} needed"
        else:
            why = None
        backprop_note = (
            f"; backprop at the same lr: {reference['diverged']}/"
            f"{reference['seeds']} diverged"
            if reference
            else ""
        )
        if why is not None:
            sentences.append(
                f"**{claim}:** inconclusive ({why}; measured: {counts}{backprop_note})."
            )
            continue
        diverged = all(row["diverged"] == row["seeds"] for row in forward)
        verdict = "supports" if diverged else "does not support"
        sentences.append(
            f"**{claim}:** this run {verdict} it ({counts}{backprop_note})."
        )
    if not tested:
        sentences.append(
            "**A larger learning rate makes forward gradient diverge:** not tested "
            "(no learning rate in this grid made a forward-gradient run diverge)."
        )
    return sentences
