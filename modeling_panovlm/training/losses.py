"""Self-supervised overlap consistency for the vision stage (VICReg between neighbouring views).

Neighbouring views of a panorama see the same directions where they overlap. Horizontally, within each pitch row:
the right `k` token columns of view `v` and the left `k` columns of view `v + 1` (wrapping from the last view of
the row to the first). Vertically, where pitch rows overlap: the bottom `m` token rows of a view and the top `m`
rows of the view below it (same yaw). The loss asks each such pair of token strips to agree (invariance) without
collapsing (variance and covariance terms of VICReg). Two modes, PanoLLaVA's: "pairwise" (its default) takes the
variance and covariance of every pair separately, "batchwise" of all the strip tokens of the batch pooled into
one set. The global view (`anyres_e2p`, `anyres`, `anyres_max`) is never paired. Which views pair, and how many
columns / rows they share, comes from the `ViewLayout`.
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


def overlap_pairs(view_embeddings: torch.Tensor, layout: ViewLayout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The two sides of every overlapping pair of views, in groups of pairs of equal size.

    Args:
        view_embeddings: `(batch, views, rows, columns, dim)`, views in `layout` order.
        layout: the view layout the embeddings were computed for.

    Returns:
        A list of `(first, second)` groups, each tensor `(batch * pairs, tokens, dim)`, batch-major:

        * horizontal neighbours (when they share `k = layout.overlap_columns(columns) > 0` columns): the right `k`
          columns of each view and the left `k` columns of its right neighbour, pitch row by pitch row, `tokens =
          rows * k`;
        * then, for each pitch row whose views share `m = layout.overlap_rows(rows, row) > 0` token rows with the
          row below: the bottom `m` rows of each of its views and the top `m` rows of the view below, `tokens =
          m * columns`.

    Raises `ValueError` when no views overlap.
    """
    rows, cols, dim = view_embeddings.shape[2:]
    groups = []
    k = layout.overlap_columns(cols)
    if k and layout.horizontal_neighbours():
        left, right = _indices(layout.horizontal_neighbours(), view_embeddings.device)
        first = view_embeddings[:, left, :, cols - k :]  # right edge of each view
        second = view_embeddings[:, right, :, :k]  # left edge of its right neighbour (the last pairs with the first)
        groups.append((first.reshape(-1, rows * k, dim), second.reshape(-1, rows * k, dim)))
    for row in range(layout.num_rows - 1):
        m = layout.overlap_rows(rows, row)
        if m:
            upper, lower = _indices(layout.vertical_neighbours(row), view_embeddings.device)
            first = view_embeddings[:, upper, rows - m :]  # bottom edge of each view of the row
            second = view_embeddings[:, lower, :m]  # top edge of the view below it
            groups.append((first.reshape(-1, m * cols, dim), second.reshape(-1, m * cols, dim)))
    if not groups:
        raise ValueError(
            f"crop_strategy={layout.crop_strategy!r} gives {len(layout.strip_views)} strip view(s) in "
            f"{layout.num_rows} pitch row(s) sharing no token columns or rows: there is no overlap to make consistent; "
            "the vision stage needs overlapping views (e2p, anyres_e2p, sliding_window with overlap_ratio > 0, or "
            "pitch levels closer than the views' vertical field of view)"
        )
    return groups


def _indices(pairs: tuple[tuple[int, int], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = zip(*pairs)
    return torch.tensor(first, device=device), torch.tensor(second, device=device)


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

    For pairs `p` (all groups of `overlap_pairs`) with strips `X_p`, `Y_p` of `L_p` tokens: `inv_p = mean((X_p - Y_p)^2)`; for a set of
    tokens `S`, `v(S) = mean_d relu(gamma - sqrt(Var_S + 1e-4))` (biased variance over the tokens) and
    `c(S) = sum_{i != j} Cov_S[i, j]^2 / dim` (unbiased covariance). With weights `a, b, c` (25, 25, 1):

    - `pairwise`: `mean_p [a inv_p + b (v(X_p) + v(Y_p)) / 2 + c (c(X_p) + c(Y_p)) / 2]`.
    - `batchwise`: `a mean_p inv_p + b v(Z) + c c(Z)`, `Z` = the `2 * sum_p L_p` tokens of all the strips of the
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
    groups = overlap_pairs(view_embeddings.float(), layout)
    invariance = torch.cat([(first - second).pow(2).mean(dim=(1, 2)) for first, second in groups])
    if mode == "pairwise":
        variance = torch.cat(
            [0.5 * (_variance_term(first, weights.gamma) + _variance_term(second, weights.gamma)) for first, second in groups]
        )
        covariance = torch.cat([0.5 * (_covariance_term(first) + _covariance_term(second)) for first, second in groups])
        loss = (weights.invariance * invariance + weights.variance * variance + weights.covariance * covariance).mean()
    else:
        # (2 * sum of pair tokens, dim): every first side, then every second side
        pooled = torch.cat([first.flatten(0, 1) for first, _ in groups] + [second.flatten(0, 1) for _, second in groups])
        if gather is not None:
            pooled = gather(pooled)
        variance = _variance_term(pooled[None], weights.gamma)[0]
        covariance = _covariance_term(pooled[None])[0]
        loss = weights.invariance * invariance.mean() + weights.variance * variance + weights.covariance * covariance
    terms = {"invariance": invariance.mean(), "variance": variance.mean(), "covariance": covariance.mean()}
    return loss, terms


__all__ = ["VICREG_MODES", "VICRegWeights", "gather_across_processes", "overlap_pairs", "overlap_vicreg_loss"]
