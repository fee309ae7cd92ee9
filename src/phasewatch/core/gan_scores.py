"""FID and KID between two sets of feature vectors (rows), in NumPy alone.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the two sets.
The matrix square root's trace comes from symmetric eigendecompositions: with
A = S1^1/2 S2 S1^1/2 (symmetric, positive semi-definite, similar to S1 S2),
Tr (S1 S2)^1/2 = sum sqrt(eig(A)); SciPy's ``sqrtm`` is not a dependency.
KID (Bińkowski et al. 2018) is the unbiased MMD² with the polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random equal-size subsets, with the standard
deviation over those subsets, as the GAN literature reports it; FID's spread is taken over
such subsets too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    root1 = _psd_sqrt(cov1)
    cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (diagonals of the within-set kernels left out)."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def _over_subsets(score: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray, subsets: int,
                  subset_size: int, rng: np.random.Generator | None) -> tuple[float, float]:
    """(mean, standard deviation) of ``score`` over ``subsets`` random draws of ``subset_size``
    rows from each set (without replacement; capped by the smaller set)."""
    rng = rng or np.random.default_rng(0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"scores over subsets need at least 2 feature vectors in each set, got {len(a)} and {len(b)}")
    values = [score(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 100,
        rng: np.random.Generator | None = None) -> tuple[float, float]:
    """KID: (mean, standard deviation) of the unbiased MMD² over random equal-size subsets."""
    return _over_subsets(mmd2_unbiased, a, b, subsets, subset_size, rng)


def fid_over_subsets(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 100,
                     rng: np.random.Generator | None = None) -> tuple[float, float]:
    """FID's (mean, standard deviation) over random equal-size subsets, the spread GAN papers
    give (e.g. 100 vs 100 images). Small subsets bias FID upwards: the mean is not :func:`fid`
    of the whole sets, and only subsets of one size compare."""
    return _over_subsets(fid, a, b, subsets, subset_size, rng)
