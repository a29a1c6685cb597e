"""95% intervals: the normal interval of a mean (tracing averages), Wilson's interval of a proportion, and
percentile-bootstrap intervals of a mean and of a paired difference of means (edit evaluations)."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.96  # two-sided 95% quantile of the normal distribution, as in the papers' tables
BOOTSTRAP_RESAMPLES = 2000


def mean_and_ci95(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width (Z95 standard errors of the mean; 0 for one value) over axis 0 of `values` (n, ...)."""
    n = len(values)
    sem = values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), Z95 * sem


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (low, high) of a proportion successes / n (n >= 1). Unlike the normal interval it
    keeps its width at 0 and n successes: 10 of 10 gives (0.722, 1.0)."""
    if n < 1:
        raise ValueError(f"a proportion needs n >= 1, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends: float rounding stays inside
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_resample_means(values: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                             chunk_elements: int = 2**22) -> np.ndarray:
    """(resamples,) means of `values` (n,) resampled with replacement, seeded; drawn in chunks of about
    chunk_elements indices, so memory stays bounded for large n."""
    rng = np.random.default_rng([seed, 17, len(values)])
    rows = max(1, chunk_elements // max(1, len(values)))
    means = [values[rng.integers(0, len(values), size=(min(rows, resamples - start), len(values)))].mean(axis=1)
             for start in range(0, resamples, rows)]
    return np.concatenate(means)


def bootstrap_interval(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval (low, high) of the mean of `values` (n,), n >= 1."""
    means = bootstrap_resample_means(np.asarray(values, dtype=np.float64), seed, resamples)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def paired_bootstrap_interval(a: np.ndarray, b: np.ndarray, seed: int = 0,
                              resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """(mean of a - b, low, high): the paired difference of two measurements of the same n units (resampled
    together, so what the units share cancels)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    difference = a - b
    low, high = bootstrap_interval(difference, seed, resamples)
    return float(difference.mean()), low, high
