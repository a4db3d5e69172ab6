"""htsr_alpha: the power-law fit recovers a known exponent, matches a plain transcription of
AlphaPruning's loop, and the scorer averages its matrices per layer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import make_ctx, tiny_model
from layerif_core.errors import ConfigError
from layerif_core.pipeline import score_task
from layerif_core.scorers.htsr import HTSROptions, esd, fit_power_law


def pareto(n: int, alpha: float, xmin: float, gen: torch.Generator) -> torch.Tensor:
    """Samples of p(λ) ∝ λ^{-α} on [xmin, ∞) by inverting the CDF 1 − (λ/xmin)^{1−α}."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def matrix_with_esd(eigs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """W = U diag(sqrt λ) Vᵀ with random orthogonal U, V: the eigenvalues of WᵀW are λ."""
    n = eigs.numel()
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (u * eigs.sqrt()[None, :]) @ v.T


def reference_alpha(eigs: torch.Tensor, xmin: str = "ks", bins: int = 100, xmin_pos: float = 2.0,
                    intended: bool = False) -> float:
    """A line-by-line loop over candidate λ_min, as net_esd_estimator (haiquanlu/AlphaPruning)."""
    e = sorted(float(x) for x in eigs)
    n_all = len(e)
    logs = [math.log(x) for x in e]

    def fit(i: int) -> tuple[float, float]:
        n = n_all - i
        alpha = 1 + n / (sum(logs[i:]) - n * logs[i])
        d = max(abs(1 - (e[j] / e[i]) ** (1 - alpha) - (j - i) / n) for j in range(i, n_all))
        return alpha, d

    if xmin == "mid":
        return fit(int(n_all / xmin_pos))[0]
    lo = hi = None
    if xmin == "peak":
        l10 = torch.log10(torch.tensor(e, dtype=torch.float64))
        counts = torch.histc(l10, bins=bins, min=float(l10.min()), max=float(l10.max()))
        edges = torch.linspace(float(l10.min()), float(l10.max()), bins + 1, dtype=torch.float64)
        peak = 10 ** float(edges[int(torch.argmax(counts))])
        lo, hi = (0.95 * peak if intended else math.log10(0.95 * peak)), 1.5 * peak
    best_alpha, best_d = 0.0, 1.0
    for i in range(n_all - 1):
        if lo is not None and e[i] < lo:
            continue
        if hi is not None and e[i] > hi:
            break
        alpha, d = fit(i)
        if alpha > 1 and d < best_d:
            best_alpha, best_d = alpha, d
    return best_alpha


TRUE_ALPHA = 2.0


@pytest.fixture(scope="module")
def heavy_tailed_esd() -> torch.Tensor:
    """The ESD of a 1200 × 1200 matrix: 1000 eigenvalues from a power law with exponent 2 above
    λ_min = 1, and a bulk of 200 below it."""
    gen = torch.Generator().manual_seed(0)
    tail = pareto(1000, TRUE_ALPHA, 1.0, gen)
    bulk = 0.05 + 0.95 * torch.rand(200, generator=gen, dtype=torch.float64)
    return esd(matrix_with_esd(torch.cat([tail, bulk]), gen))


@pytest.mark.parametrize("xmin", ["ks", "peak"])
def test_recovers_power_law_exponent_of_a_matrix(heavy_tailed_esd, xmin):
    fit = fit_power_law(heavy_tailed_esd, HTSROptions(xmin=xmin))
    assert abs(fit.alpha - TRUE_ALPHA) < 0.1
    assert 0.9 < fit.xmin < 1.2  # the KS search finds where the power law starts


def test_esd_is_the_squared_singular_values():
    gen = torch.Generator().manual_seed(1)
    eigs = torch.sort(torch.rand(12, generator=gen, dtype=torch.float64) + 0.1).values
    w = matrix_with_esd(eigs, gen)
    torch.testing.assert_close(esd(w), eigs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(esd(w.T.contiguous()), eigs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("xmin", ["ks", "peak", "mid"])
def test_fit_matches_reference_loop(xmin):
    gen = torch.Generator().manual_seed(2)
    eigs = esd(torch.randn(40, 90, generator=gen))
    got = fit_power_law(eigs, HTSROptions(xmin=xmin)).alpha
    assert got == pytest.approx(reference_alpha(eigs, xmin), rel=1e-9)


def test_intended_peak_window_matches_reference_loop():
    # scaled so that the peak is above 1 and the source's bound log10(0.95·peak) differs from 0.95·peak
    gen = torch.Generator().manual_seed(4)
    eigs = esd(torch.randn(80, 80, generator=gen)) * 50
    got = fit_power_law(eigs, HTSROptions(xmin="peak", peak_lower_bound="intended")).alpha
    assert got == pytest.approx(reference_alpha(eigs, "peak", intended=True), rel=1e-9)
    assert got != pytest.approx(fit_power_law(eigs, HTSROptions(xmin="peak")).alpha, rel=1e-3)


def test_fit_is_invariant_to_scaling_the_weights():
    gen = torch.Generator().manual_seed(3)
    eigs = esd(torch.randn(30, 50, generator=gen))
    a = fit_power_law(eigs, HTSROptions(xmin="ks")).alpha
    assert fit_power_law(eigs * 7.0, HTSROptions(xmin="ks")).alpha == pytest.approx(a, rel=1e-9)


def _matrices(ctx):
    return [[tm.weight_matrix(tm.module.weight).detach() for tm in layer]
            for layer in ctx.layer_map.layers]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_layer_score_is_mean_alpha_of_its_matrices(tmp_path, arch):
    ctx = make_ctx(tmp_path, model=tiny_model(arch), scorer={"name": "htsr_alpha"})
    scores = score_task(ctx, ctx.config.tasks[0])
    want = [sum(reference_alpha(torch.linalg.svdvals(w.double()) ** 2, "peak") for w in layer)
            / len(layer) for layer in _matrices(ctx)]
    assert scores.scorer == "htsr_alpha" and scores.higher_is_better is False
    torch.testing.assert_close(scores.values, torch.tensor(want, dtype=torch.float32),
                               rtol=1e-4, atol=0)


def test_median_and_alpha_hat_options(tmp_path):
    ctx = make_ctx(tmp_path, scorer={"name": "htsr_alpha", "options": {
        "metric": "alpha_hat", "aggregate": "median", "xmin": "ks"}})
    scores = score_task(ctx, ctx.config.tasks[0])
    want = []
    for layer in _matrices(ctx):
        eigs = [torch.linalg.svdvals(w.double()) ** 2 for w in layer]
        vals = sorted(reference_alpha(e, "ks") * math.log10(float(e.max())) for e in eigs)
        k = len(vals)
        want.append(vals[k // 2] if k % 2 else (vals[k // 2 - 1] + vals[k // 2]) / 2)
    torch.testing.assert_close(scores.values, torch.tensor(want, dtype=torch.float32),
                               rtol=1e-4, atol=1e-6)


def test_unknown_option_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="xmin"):
        make_ctx(tmp_path, scorer={"name": "htsr_alpha", "options": {"xmim": "ks"}})


def test_a_bfloat16_model_scores_as_its_float32_copy(tmp_path):
    """The spectra are of a float32 copy of the weights: a model loaded in bfloat16 gives the alphas
    of the same weights held in float32, and the scores say in which dtype the weights came."""
    half = tiny_model("llama").to(torch.bfloat16)
    full = copy.deepcopy(half).float()
    got = score_task(c := make_ctx(tmp_path / "bf16", model=half, scorer={"name": "htsr_alpha"}),
                     c.config.tasks[0])
    want = score_task(c := make_ctx(tmp_path / "fp32", model=full, scorer={"name": "htsr_alpha"}),
                      c.config.tasks[0])
    torch.testing.assert_close(got.values, want.values, rtol=1e-6, atol=0)
    assert got.details["weights_dtype"] == "bfloat16" and want.details["weights_dtype"] == "float32"
    assert got.details["weights_precision"] == "float32"


def test_float16_precision_is_alpha_of_the_weights_rounded_to_half(tmp_path):
    """AlphaPruning's published runs: the model loaded in float16, svdvals of ``matrix.to(float32)``."""
    ctx = make_ctx(tmp_path, scorer={"name": "htsr_alpha", "options": {"weights_precision": "float16"}})
    scores = score_task(ctx, ctx.config.tasks[0])
    want = [sum(reference_alpha(torch.linalg.svdvals(w.half().float()).double() ** 2, "peak")
                for w in layer) / len(layer) for layer in _matrices(ctx)]
    full = [sum(reference_alpha(torch.linalg.svdvals(w.double()) ** 2, "peak") for w in layer)
            / len(layer) for layer in _matrices(ctx)]
    torch.testing.assert_close(scores.values, torch.tensor(want, dtype=torch.float32), rtol=1e-4, atol=0)
    assert want != full  # rounding to float16 moves the alphas of this model (else this tests nothing)
    assert scores.details["weights_precision"] == "float16"


def test_unknown_weights_precision_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="weights_precision") as err:
        make_ctx(tmp_path, scorer={"name": "htsr_alpha", "options": {"weights_precision": "bfloat16"}})
    assert "\n" not in str(err.value) and "float16" in str(err.value)
