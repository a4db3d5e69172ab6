"""Options every curvature estimator shares: which Fisher, and the damping ``λ`` per module.

``I[l, i] = (q^l)ᵀ (G_l + λ_l I)^{-1} g_i^l`` (architecture §4). The default damping is
``λ_m = 0.1 · mean eigenvalue`` of module m's curvature block (Grosse et al. 2023 and kronfluence
use 0.1 × the mean EK-FAC eigenvalue); a number replaces it for every module, and ``module_damping``
sets it per module by a regular expression on the module's full name.
"""

from __future__ import annotations

import re

from layerif_core.estimators.options import CurvatureOptions
from layerif_core.layers import TrackedModule


def module_damping(opts: CurvatureOptions, tm: TrackedModule, mean_eigenvalue: float) -> float:
    """``λ_m`` of one module: a matching ``module_damping`` rule, else ``damping``, else relative.

    A module whose curvature is zero (no gradient reaches it) gets a tiny positive λ so the solve
    stays finite; its query gradient is zero too, so its influence is 0.
    """
    fixed = absolute_damping(opts, tm)
    if fixed is not None:
        return fixed
    return max(opts.relative_damping * float(mean_eigenvalue), 1e-12)


def absolute_damping(opts: CurvatureOptions, tm: TrackedModule) -> float | None:
    """The damping given as a number for this module (a rule or ``damping``), else None."""
    for pattern, value in opts.module_damping.items():
        if re.search(pattern, tm.name):
            return float(value)
    return float(opts.damping) if opts.damping is not None else None


def check_rules(opts: CurvatureOptions, modules: list[TrackedModule]) -> None:
    """Refuse a ``module_damping`` rule that matches no tracked module (a typo would go unnoticed)."""
    from layerif_core.errors import ConfigError

    for pattern in opts.module_damping:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"module_damping rule {pattern!r} is not a valid regex ({exc}); "
                              "fix the pattern.") from None
        if not any(rx.search(tm.name) for tm in modules):
            example = modules[0].name if modules else "?"
            raise ConfigError(f"module_damping rule {pattern!r} matches no tracked module (names look "
                              f"like {example!r}); fix the pattern.")
