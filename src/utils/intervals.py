"""The one 95% interval of the library: mean and half-width over independent values."""

from __future__ import annotations

import numpy as np

Z95 = 1.96  # two-sided 95% quantile of the normal distribution, as in the papers' tables


def mean_and_ci95(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width (Z95 standard errors of the mean; 0 for one value) over axis 0 of `values` (n, ...)."""
    n = len(values)
    sem = values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), Z95 * sem
