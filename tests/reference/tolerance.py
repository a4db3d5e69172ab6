"""How close layerif must come to the reference, and how far a deliberately wrong variant must be."""

from __future__ import annotations

import torch

RTOL = 1e-5  # layer scores: per layer; influence matrices: relative to their largest entry
SMOOTHING_ATOL = 1e-4  # the authors' smoothed file is rounded to 4 decimals
WRONG = 100 * RTOL  # a wrong side, loss or reduction must miss the reference by far more than RTOL
# bfloat16 (the authors' model): layerif's run of the bf16 model against the authors' bf16 gradients
# combined in their code's dtypes. Measured on the tiny Llama (8 × 4 examples, both DataInf modes):
# scores within 0.08% per layer, the influence matrix within 0.09% of its largest entry; the same
# bf16 run is 0.4% (scores) and 0.6% (influences) from the float32 model's reference, so 0.2%
# tells the two apart.
BF16_RTOL = 2e-3


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got − expected| / max |expected|``."""
    got, expected = got.double(), expected.double()
    return float((got - expected).abs().max() / expected.abs().max())


def assert_scores_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Every layer within ``RTOL`` of the reference, relative to that layer's value."""
    torch.testing.assert_close(got.double(), expected.double(), rtol=RTOL, atol=0.0)
