"""Self-supervised overlap consistency for the vision stage (VICReg between neighbouring views).

Neighbouring strip views of a panorama see the same directions in their shared columns: the right `k` token
columns of view `v` and the left `k` columns of view `v + 1` (wrapping from the last view to the first). The loss
asks those two strips to agree (invariance) without collapsing (variance and covariance terms of VICReg). Two
modes, PanoLLaVA's: "pairwise" (its default) takes the variance and covariance of every pair separately,
"batchwise" of all the strip tokens of the batch pooled into one set. The global view of `anyres_e2p` is never
paired.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from configuration_panovlm.view_layout import ViewLayout


VICREG_MODES = ("pairwise", "batchwise")


@dataclass(frozen=True)
class VICRegWeights:
    """Weights of the three VICReg terms (PanoLLaVA: 25 / 25 / 1) and the variance target `gamma`."""

    invariance: float = 25.0
    variance: float = 25.0
    covariance: float = 1.0
    gamma: float = 1.0


def overlap_pairs(
    view_embeddings: torch.Tensor, layout: ViewLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sides of every overlapping pair of strip views.

    Args:
        view_embeddings: `(batch, views, rows, columns, dim)`, views in `layout` order.
        layout: the view layout the embeddings were computed for.

    Returns:
        `(left, right)`, each `(batch * strip_views, rows * k, dim)`: the right `k` columns of view `v` and the left
        `k` columns of its right neighbour, `k = layout.overlap_columns(columns)`.
    """
    strip = view_embeddings[:, 1:] if layout.has_global_view else view_embeddings
    num_strip, cols = strip.shape[1], strip.shape[3]
    k = layout.overlap_columns(cols)
    if num_strip < 2 or k == 0:
        raise ValueError(
            f"crop_strategy={layout.crop_strategy!r} gives {num_strip} strip view(s) sharing {k} token columns: there "
            "is no overlap to make consistent; the vision stage needs overlapping views (e2p, anyres_e2p, "
            "sliding_window with overlap_ratio > 0)"
        )
    left = strip[:, :, :, cols - k :]  # right edge of each view
    right = strip.roll(-1, dims=1)[:, :, :, :k]  # left edge of its right neighbour (the last pairs with the first)
    dim = strip.shape[-1]
    return left.reshape(-1, left.shape[2] * k, dim), right.reshape(-1, right.shape[2] * k, dim)


def _variance_term(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over features of relu(gamma - std), std over the tokens of each set; `x`: `(sets, tokens, dim)`."""
    std = torch.sqrt(x.var(dim=1, unbiased=False) + 1e-4)
    return F.relu(gamma - std).mean(dim=-1)


def _covariance_term(x: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by `dim`, per set of tokens; `x`: `(sets, tokens, dim)`."""
    tokens, dim = x.shape[1], x.shape[2]
    centred = x - x.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / max(tokens - 1, 1)  # (pairs, dim, dim)
    off_diagonal = cov.pow(2).sum(dim=(1, 2)) - torch.diagonal(cov, dim1=1, dim2=2).pow(2).sum(dim=-1)
    return off_diagonal / dim


def gather_across_processes(tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` of every data-parallel process concatenated along dim 0 (same shape on every process), with
    gradients: each process gets back the sum over processes of the gradients of its own rows."""
    return torch.cat(dist_nn.all_gather(tokens), dim=0)


def overlap_vicreg_loss(
    view_embeddings: torch.Tensor,
    layout: ViewLayout,
    weights: VICRegWeights = VICRegWeights(),
    mode: str = "pairwise",
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg between the overlapping columns of neighbouring views.

    For pairs `p` with strips `X_p`, `Y_p` of `L = rows * k` tokens: `inv_p = mean((X_p - Y_p)^2)`; for a set of
    tokens `S`, `v(S) = mean_d relu(gamma - sqrt(Var_S + 1e-4))` (biased variance over the tokens) and
    `c(S) = sum_{i != j} Cov_S[i, j]^2 / dim` (unbiased covariance). With weights `a, b, c` (25, 25, 1):

    - `pairwise`: `mean_p [a inv_p + b (v(X_p) + v(Y_p)) / 2 + c (c(X_p) + c(Y_p)) / 2]`.
    - `batchwise`: `a mean_p inv_p + b v(Z) + c c(Z)`, `Z` = the `2 * pairs * L` tokens of all the strips of the
      batch pooled into one set, whose statistics all pairs share.

    Computed in float32.

    Args:
        gather: for `batchwise` under data parallelism, concatenates each process's pooled tokens with every other
            process's (e.g. `gather_across_processes`), so the statistics are those of the global batch and the
            loss and gradients equal a single process's on that batch. Unused by `pairwise`, whose pairs are
            independent.

    Returns:
        `(loss, terms)` where `terms` holds the unweighted `invariance`, `variance` and `covariance` (means over
        pairs for `pairwise`).
    """
    if mode not in VICREG_MODES:
        raise ValueError(f"VICReg mode must be one of {list(VICREG_MODES)}, got {mode!r}")
    left, right = overlap_pairs(view_embeddings.float(), layout)
    invariance = (left - right).pow(2).mean(dim=(1, 2))
    if mode == "pairwise":
        variance = 0.5 * (_variance_term(left, weights.gamma) + _variance_term(right, weights.gamma))
        covariance = 0.5 * (_covariance_term(left) + _covariance_term(right))
        loss = (weights.invariance * invariance + weights.variance * variance + weights.covariance * covariance).mean()
    else:
        pooled = torch.cat([left, right]).flatten(0, 1)  # (2 * pairs * L, dim)
        if gather is not None:
            pooled = gather(pooled)
        variance = _variance_term(pooled[None], weights.gamma)[0]
        covariance = _covariance_term(pooled[None])[0]
        loss = weights.invariance * invariance.mean() + weights.variance * variance + weights.covariance * covariance
    terms = {"invariance": invariance.mean(), "variance": variance.mean(), "covariance": covariance.mean()}
    return loss, terms


__all__ = ["VICREG_MODES", "VICRegWeights", "gather_across_processes", "overlap_pairs", "overlap_vicreg_loss"]
