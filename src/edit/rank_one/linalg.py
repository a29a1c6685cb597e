"""Linear algebra of the rank-one and least-squares updates, in float64 on the CPU: solves with a fixed PSD matrix
(C, the keys' second moment), the null-space projector, and the key combination of a multi-key rank-one update."""

from __future__ import annotations

import torch

from src.utils.errors import InputError


class PSDSolver:
    """Solves matrix x = rhs for a fixed PSD matrix in float64 on the CPU, without forming the inverse: Cholesky,
    factored once, else least squares (for an ill-conditioned or singular matrix, e.g. C from fewer keys than
    dimensions)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix.double().cpu()
        factor, info = torch.linalg.cholesky_ex(self.matrix)
        self.factor = factor if int(info) == 0 else None

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """rhs: (n,) or (n, m) -> the same shape, float64."""
        rhs = rhs.double().cpu()
        columns = rhs[:, None] if rhs.dim() == 1 else rhs
        solution = torch.cholesky_solve(columns, self.factor) if self.factor is not None else None
        if solution is None or not torch.isfinite(solution).all():
            solution = torch.linalg.lstsq(self.matrix, columns, driver="gelsd").solution
        return solution[:, 0] if rhs.dim() == 1 else solution


def solve_psd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """matrix^-1 rhs in float64 on the CPU (`PSDSolver`, for one right-hand side). rhs: (n,) or (n, m)."""
    return PSDSolver(matrix).solve(rhs)


def null_space_projector(moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """(d, d) float64 projector onto the eigenvectors of the PSD `moment` whose eigenvalues are below
    `threshold` x the largest: keys in the other directions (the preserved ones) are left unchanged by an update
    W += delta u^T with u = P k* (AlphaEdit, Fang et al. 2025, with a hard rank-one constraint)."""
    values, vectors = torch.linalg.eigh(moment.double().cpu())
    kept = vectors[:, values < threshold * values[-1]]
    if kept.shape[1] == 0:
        raise InputError(f"null_space_threshold {threshold} leaves no direction: every eigenvalue of C is above it")
    return kept @ kept.T


def combine_keys(keys: torch.Tensor, denominator_keys: torch.Tensor, precondition) -> tuple[torch.Tensor, ...]:
    """(k_star, key, u) for an update delta u^T / (u . key) that gives delta in full at every row of
    `denominator_keys` (the rows of `keys` themselves for key_mode "consistent").

    keys, denominator_keys: (m, d) float64, rows k_j and k_den_j; precondition: x (d,) or (d, m) -> C^-1 x (or P x,
    or x for C = I). u = C^-1 K^T a, with a (sum 1) solving (K_den C^-1 K^T) a = c 1, so u . k_den_j = u . key for
    every j; k_star = K^T a (a combination of the keys; entries of a may be negative), key = K_den^T a. With one key:
    a = 1, u = C^-1 k*. Keys whose system has no such a (collinear or cancelling) are an InputError."""
    if keys.shape[0] == 1:
        return keys[0], denominator_keys[0], precondition(keys[0])
    preconditioned = precondition(keys.T)  # (d, m)
    gram = denominator_keys @ preconditioned  # (m, m)
    ones = torch.ones(len(keys), dtype=gram.dtype)
    a = torch.linalg.lstsq(gram, ones[:, None], driver="gelsd").solution[:, 0]
    if not torch.isfinite(a).all() or abs(float(a.sum())) < 1e-12 or \
            float((gram @ a - ones).norm()) > 1e-6 * float(ones.norm()):
        raise InputError(f"the {len(keys)} keys of this multi-token edit give no update with delta at each of them "
                         "(collinear keys); use fact_token: subject_last")
    a = a / a.sum()
    return keys.T @ a, denominator_keys.T @ a, preconditioned @ a
