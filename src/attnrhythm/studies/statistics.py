"""Statistics shared by the studies: ratio-of-sums estimates over problems, bootstrap intervals,
permutation p-values and binomial intervals.

Every coupling is summarised per problem i by four numbers: an observed numerator and
denominator and a random-baseline numerator and denominator. The study-level values are
ratios of sums, observed = sum(num_i) / sum(den_i) and random = sum(rnum_i) / sum(rden_i),
so a mean over problems (den_i = 1) and a pooled proportion (den_i = count_i) are the same
computation, and a bootstrap replicate is the same ratio over resampled problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnrhythm.errors import AttnRhythmError


@dataclass
class RatioParts:
    """Per-problem parts of one coupling (arrays of equal length, one entry per problem)."""

    num: np.ndarray
    den: np.ndarray
    rnum: np.ndarray
    rden: np.ndarray
    perm_num: np.ndarray  # (P, problems): observed numerators under the permutation null

    def __post_init__(self) -> None:
        for name in ("num", "den", "rnum", "rden"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        self.perm_num = np.asarray(self.perm_num, dtype=np.float64)
        n = len(self.num)
        if not (len(self.den) == len(self.rnum) == len(self.rden) == n):
            raise ValueError("RatioParts arrays must have one entry per problem")
        if self.perm_num.ndim != 2 or self.perm_num.shape[1] != n:
            raise ValueError("perm_num must have shape (permutations, problems)")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray | float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def lift(observed: float, random: float) -> float:
    """(observed - random) / random; NaN when random is 0 or undefined."""
    if not math.isfinite(observed) or not math.isfinite(random) or random == 0:
        return math.nan
    return (observed - random) / random


def summarise(parts: RatioParts, *, bootstrap: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Observed, random, lift, the bootstrap interval of lift (and of observed) over problems, and
    the one-sided permutation p-value for observed > random.

    p = (1 + #{permutation statistic >= observed}) / (1 + permutations) (never 0).
    Percentile intervals; a replicate whose random baseline is 0 is dropped.
    """
    if bootstrap < 0:
        raise AttnRhythmError(f"bad --bootstrap {bootstrap}: it must be >= 0")
    keep = (parts.den > 0) & (parts.rden > 0)
    n = int(keep.sum())
    out: dict = {"problems": n}
    if n == 0:
        out.update(observed=None, random=None, lift=None, lift_ci=None, observed_ci=None, p_value=None,
                   permutations=int(parts.perm_num.shape[0]), bootstrap=bootstrap)  # fmt: skip
        return out
    num, den, rnum, rden = parts.num[keep], parts.den[keep], parts.rnum[keep], parts.rden[keep]
    observed = float(num.sum() / den.sum())
    random_ = float(rnum.sum() / rden.sum())
    out.update(observed=observed, random=random_, lift=_none(lift(observed, random_)))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(bootstrap, n))
        obs_b = _ratio(num[idx].sum(1), den[idx].sum(1))
        rnd_b = _ratio(rnum[idx].sum(1), rden[idx].sum(1))
        with np.errstate(divide="ignore", invalid="ignore"):
            lift_b = (obs_b - rnd_b) / rnd_b
        lift_b = lift_b[np.isfinite(lift_b)]
        obs_b = obs_b[np.isfinite(obs_b)]
        out["lift_ci"] = _interval(lift_b, lo_q, hi_q)
        out["observed_ci"] = _interval(obs_b, lo_q, hi_q)
    else:
        out["lift_ci"] = out["observed_ci"] = None
    perms = parts.perm_num[:, keep]
    n_perm = perms.shape[0]
    if n_perm:
        null = perms.sum(1) / den.sum()
        # a tolerance keeps exact ties (e.g. the identity permutation) counted as >= observed
        exceed = int((null >= observed - 1e-12 * max(1.0, abs(observed))).sum())
        out["p_value"] = (1 + exceed) / (1 + n_perm)
        out["null_mean"] = float(null.mean())
    else:
        out["p_value"] = None
    out["permutations"] = int(n_perm)
    out["bootstrap"] = int(bootstrap)
    out["level"] = level
    return out


def _interval(values: np.ndarray, lo_q: float, hi_q: float) -> list[float] | None:
    if values.size == 0:
        return None
    return [float(np.quantile(values, lo_q)), float(np.quantile(values, hi_q))]


def _none(x: float) -> float | None:
    return None if not math.isfinite(x) else x


def random_subsets(rng: np.random.Generator, n: int, k: int, permutations: int) -> np.ndarray:
    """(permutations, k) positions: each row a uniform random k-subset of range(n)."""
    if k == 0 or permutations == 0:
        return np.zeros((permutations, 0), dtype=np.int64)
    return np.argsort(rng.random((permutations, n)), axis=1)[:, :k]


def wilson_interval(successes: float, trials: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a binomial proportion (None for zero trials)."""
    if trials <= 0:
        return None
    z = _z(level)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def sign_test(wins: int, losses: int) -> float | None:
    """Exact two-sided sign test p-value for wins vs losses (ties excluded); None without trials."""
    n = wins + losses
    if n == 0:
        return None
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_mean_ci(
    values: np.ndarray, *, bootstrap: int = 2000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval of a mean (None for no values or no replicates)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or bootstrap <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(bootstrap, values.size))].mean(1)
    return _interval(means, (1 - level) / 2, 1 - (1 - level) / 2)


def _z(level: float) -> float:
    # inverse normal CDF by bisection on erf (no scipy needed)
    target = 1 - (1 - level) / 2
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
