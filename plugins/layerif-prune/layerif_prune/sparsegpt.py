"""SparseGPT (Frantar & Alistarh 2023; IST-DASLab/sparsegpt ``sparsegpt.py``): one-shot pruning of a
linear map ``y = W x`` that minimises the layer-wise reconstruction error ``‖WX − ŴX‖²``.

With ``H = 2XXᵀ/n`` over the calibration tokens, dampened by ``percdamp · mean(diag H)``, and ``U`` the
upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``), columns are processed left to right in blocks of
``blocksize``. At the start of a block the mask is chosen adaptively inside it: the ``⌊s · rows ·
blocksize⌋`` weights of smallest OBS saliency ``w² / U_jj²`` (for N:M, the M − N smallest of every M
columns, chosen as the group is reached). Pruning column j zeroes the masked weights and spreads the
error ``e = (w_j − ŵ_j) / U_jj`` onto the not yet processed columns: ``W[:, j:] −= e U[j, j:]``,
the lazy batch update carrying a block's errors to the later blocks in one matmul.
"""

from __future__ import annotations

import torch

from layerif_core.errors import NumericalError


def dampened_inverse_factor(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``."""
    h = hessian.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0  # inputs that are always zero: any weight is exact; keep H invertible
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += percdamp * torch.mean(torch.diag(h))
    try:
        lower = torch.linalg.cholesky(h)
        inverse = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(inverse, upper=True).float()
    except RuntimeError:
        raise NumericalError("SparseGPT: the dampened Hessian is not positive definite; raise "
                             "percdamp (e.g. 0.05) or add calibration samples.") from None


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor | None, sparsity: float,
                    nm: tuple[int, int] | None = None, blocksize: int = 128, percdamp: float = 0.01,
                    factor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruned weight and mask (True = pruned) of ``weight`` ``[d_out, d_in]`` (fp32 math).

    ``factor`` is :func:`dampened_inverse_factor` of the Hessian when already computed (modules that
    share their input share it); otherwise it is computed from ``hessian``.
    """
    # w: [d_out, d_in]; u: [d_in, d_in] upper-triangular
    w = weight.detach().float().clone(memory_format=torch.contiguous_format)
    d_out, d_in = w.shape
    u = factor if factor is not None else dampened_inverse_factor(hessian.to(w.device), percdamp)
    mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    if nm is None and sparsity <= 0:
        return w, mask
    n_prune = (nm[1] - nm[0]) if nm is not None else 0
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        w1 = w[:, i1:i2].contiguous()
        u1 = u[i1:i2, i1:i2]
        diag = torch.diag(u1)
        err1 = torch.zeros_like(w1)
        if nm is None:
            saliency = w1 ** 2 / diag[None, :] ** 2
            k = int(saliency.numel() * sparsity)
            mask1 = torch.zeros(w1.shape, dtype=torch.bool, device=w.device)
            if k > 0:
                mask1.view(-1)[torch.topk(saliency.flatten(), k, largest=False).indices] = True
        else:
            mask1 = torch.zeros(w1.shape, dtype=torch.bool, device=w.device)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                group = w1[:, i:i + nm[1]] ** 2 / diag[None, i:i + nm[1]] ** 2
                mask1.scatter_(1, i + torch.topk(group, n_prune, dim=1, largest=False).indices, True)
            col = w1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w, mask
