"""Bytes moved by the cross-device collectives of a compiled step: the diagnostic
behind the communication table of the `distributed` suite."""

import re


_COLLECTIVES: tuple[str, ...] = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(_COLLECTIVES) + r")(?:-start)?\("
)
_ARRAY_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes produced by each kind of cross-device collective in an HLO module: a
    diagnostic of how much one step communicates.

    **Arguments:**

    - `hlo_text`: the text of a compiled module, e.g.
        `step.lower(model, opt_state, batch, key).compile().as_text()` for a
        `fwdeqx.distributed.DistributedTrainStep`.

    **Returns:**

    A dict from the collective (`"all-reduce"`, `"all-gather"`, `"reduce-scatter"`,
    `"all-to-all"`, `"collective-permute"`) to the total bytes of the results of
    its instructions (every kind present, 0 when absent). For an all-reduce this is
    the size of the reduced buffer; asynchronous `-start`/`-done` pairs are counted
    once.
    """
    totals: dict[str, int] = dict.fromkeys(_COLLECTIVES, 0)
    for match in _INSTRUCTION.finditer(hlo_text):
        totals[match.group("op")] += _shape_bytes(match.group("shape"))
    return totals


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY_SHAPE.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        size = 1
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        total += size * _DTYPE_BYTES[dtype]
    return total
