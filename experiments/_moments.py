"""The moments of a forward gradient that the theory experiments check, for each
tangent distribution: one table, keyed by distribution type.

A forward gradient is g = (a·v) v with a = ∇f ∈ Rⁿ and a tangent v whose components
are independent with E[v_i] = 0, E[v_i²] = 1. All the constants the experiments need
follow from one number per distribution, the fourth moment κ = E[v_i⁴]:

| quantity | in general | Gaussian (κ = 3) | Rademacher (κ = 1) |
|---|---|---|---|
| E‖g‖² / ‖a‖² = E[(a·v)²‖v‖²] / ‖a‖² | n − 1 + κ | n + 2 | n |
| E‖g − a‖² / ‖a‖² | n − 2 + κ | n + 1 | n − 1 |
| C1 = E‖v‖⁴ (Theorem 4) | n² + (κ − 1)n | n(n + 2) | n² |
| E[(a·v)² vvᵀ] | ‖a‖²I + 2aaᵀ + (κ − 3) diag(a²) | | |

`fwdeqx.Scaled(base, s)` tangents v = s·u multiply g by s²: E[g] = s²a, and every
second moment of g by s⁴.
"""

import dataclasses

import numpy as np

import fwdeqx


FOURTH_MOMENT: dict[type[fwdeqx.AbstractTangentDistribution], float] = {
    fwdeqx.Gaussian: 3.0,
    fwdeqx.Rademacher: 1.0,
}
"""κ = E[v_i⁴] of one tangent component, by distribution type."""


@dataclasses.dataclass(frozen=True)
class Moments:
    """The moments of g = (a·v) v for tangents with fourth moment `kurtosis` per
    component, multiplied by `scale` (v = scale·u, Cov[u] = I)."""

    kurtosis: float
    scale: float = 1.0

    @property
    def mean_factor(self) -> float:
        """c in E[g] = c·a: 1 when Cov[v] = I, scale² otherwise."""
        return self.scale**2

    def second_moment(self, n: int) -> float:
        """E‖g‖²/‖a‖² = scale⁴ (n − 1 + κ): n + 2 Gaussian, n Rademacher."""
        return self.scale**4 * (n - 1 + self.kurtosis)

    def relative_variance(self, n: int) -> float:
        """E‖g − c·a‖²/‖c·a‖² = n − 2 + κ: n + 1 Gaussian, n − 1 Rademacher. The
        mean of N forward gradients has 1/N of it."""
        return n - 2 + self.kurtosis

    def relative_variance_text(self) -> str:
        """`relative_variance` as a formula in n, for plot labels: "n+1", "n−1"."""
        constant = self.kurtosis - 2
        return f"n{'+' if constant >= 0 else '−'}{abs(constant):g}"

    def norm_fourth_moment(self, n: int) -> float:
        """C1 = E‖v‖⁴ = scale⁴ (n² + (κ − 1)n): n(n + 2) Gaussian, n² Rademacher."""
        return self.scale**4 * (n * n + (self.kurtosis - 1) * n)

    def quartic(self, second: np.ndarray) -> np.ndarray:
        """E[(a·v)² vvᵀ] for a random `a`, independent of v, with E[aaᵀ] = `second`:
        scale⁴ (tr(S)·I + 2S + (κ − 3) diag(S))."""
        n = second.shape[0]
        diagonal = np.diag(np.diag(second))
        out = np.trace(second) * np.eye(n) + 2 * second
        return self.scale**4 * (out + (self.kurtosis - 3) * diagonal)


def moments(tangents: fwdeqx.AbstractTangentDistribution) -> Moments:
    """The `Moments` of forward gradients along `tangents` (a `fwdeqx.Gaussian`,
    `fwdeqx.Rademacher`, or a `fwdeqx.Scaled` one of those)."""
    if isinstance(tangents, fwdeqx.Scaled):
        base = moments(tangents.base)
        return dataclasses.replace(base, scale=base.scale * tangents.scale)
    for kind, kurtosis in FOURTH_MOMENT.items():
        if isinstance(tangents, kind):
            return Moments(kurtosis)
    known = ", ".join(kind.__name__ for kind in FOURTH_MOMENT)
    raise ValueError(
        f"no moments recorded for {type(tangents).__name__}; add its E[v_i⁴] to "
        f"FOURTH_MOMENT (known: {known})"
    )
