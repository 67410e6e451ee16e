"""Table 2 of the paper: three couplings of the rhythm, each against a random baseline.

Per problem (one analysed response; indices are response-relative) with peaks as defined in
:mod:`attnrhythm.method.peaks` (``q`` and ``rule`` configurable; WAAD, FAI and receiver FAI use the
same definition):

1. ``entropy_at_waad_peaks``: mean token entropy at WAAD peaks, against the mean entropy over
   all response tokens. Study value: the mean of the per-problem means (each problem weighs
   the same). The null relocates the WAAD peaks.
2. ``receiver_vs_global_fai_peaks``: the share of receiver-head FAI peaks that are also
   global-head FAI peaks (pooled over problems), against the share expected by chance,
   |R| * |G| / n_defined per problem (n_defined: positions where both FAI curves are
   defined). The null relocates the receiver peaks on those positions.
3. ``fai_after_waad_peaks``: the share of (global-head) FAI peaks s with a WAAD peak w at or
   right before it, 0 <= s - w <= ``lag`` (default 1: "at or right after"), pooled; against
   the same share with the WAAD peaks shuffled. The null relocates the WAAD peaks.

The null (``--null``): ``shift`` (default) moves all relocated peaks of a response by one
random cyclic offset, keeping their count and spacing; ``uniform`` draws a uniform random
subset of the same size (the paper's literal "shuffled peaks"). Peaks of one curve are never
adjacent (a local maximum's neighbour is not one), so uniform subsets cluster more than real
peaks do, and coupling 3 shows a spurious lift of about +10% on independent random curves under
``uniform`` (measured in the tests); ``shift`` has no such bias. The random column is the
exact expectation under the chosen null (the domain mean for 1, |R||G|/n for 2, the mean over
all offsets or the hypergeometric expectation for 3).

lift = (observed - random) / random. The interval is a percentile bootstrap over problems;
the p-value is one-sided (observed > random), from permutations that draw one null
relocation per problem (see :mod:`.statistics`). Entropy and WAAD of token t are read at the
same index t (entropy of the distribution that produced t; WAAD of t's attention row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.peaks import check_peak_spec, peaks
from attnrhythm.studies.statistics import RatioParts, random_subsets, summarise

NULLS = ("shift", "uniform")
COUPLINGS = ("entropy_at_waad_peaks", "receiver_vs_global_fai_peaks", "fai_after_waad_peaks")

#: docs/method.md section 6 (Table 2: 70 GSM8K questions, Qwen3-4B-Base, T = 0.7)
PAPER = {
    "entropy_at_waad_peaks": {"observed": 0.3608, "random": 0.2386, "lift": 0.5197},
    "receiver_vs_global_fai_peaks": {"observed": 0.6084, "random": 0.2241, "lift": 1.7149},
    "fai_after_waad_peaks": {"observed": 0.5253, "random": 0.3687, "lift": 0.4247},
}

LABELS = {
    "entropy_at_waad_peaks": "Entropy at WAAD peaks vs all tokens (nats)",
    "receiver_vs_global_fai_peaks": "Receiver-head FAI peaks that are global-head FAI peaks",
    "fai_after_waad_peaks": "FAI peaks at or right after a WAAD peak (vs shuffled)",
}


@dataclass
class PeakSpec:
    """The documented, configurable peak definition (see :mod:`attnrhythm.method.peaks`) and the lag of
    coupling 3."""

    q: float = 0.4
    rule: str = "local-max"
    lag: int = 1
    null: str = "shift"

    def __post_init__(self) -> None:
        check_peak_spec(self.q, self.rule)
        if self.null not in NULLS:
            raise AttnRhythmError(f"unknown --null '{self.null}': use one of {', '.join(NULLS)}")
        if self.lag < 0:
            raise AttnRhythmError(f"bad --lag {self.lag}: it must be >= 0 (0 = the same token only)")


@dataclass
class TraceSeries:
    """The curves of one analysed response (NaN = undefined)."""

    key: str
    waad: np.ndarray
    fai: np.ndarray
    fai_receiver: np.ndarray
    entropy: np.ndarray

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TraceSeries:
        key = str(record.get("key", record.get("id", "?")))
        metrics = record.get("metrics")
        if not isinstance(metrics, dict):
            raise AttnRhythmError(f"record {key} has no metrics: pass records written by attnrhythm analyze")
        if metrics.get("fai_receiver") is None:
            raise AttnRhythmError(
                f"record {key} has no receiver-head FAI: analyse with receiver heads on (--receivers > 0)"
            )
        arrays = {}
        for name in ("waad", "fai", "fai_receiver", "entropy"):
            values = metrics.get(name)
            if not isinstance(values, list):
                raise AttnRhythmError(f"record {key} has no metrics.{name}: rerun attnrhythm analyze")
            arrays[name] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        n = len(arrays["waad"])
        if any(len(a) != n for a in arrays.values()):
            raise AttnRhythmError(f"record {key} has curves of different lengths: the record is corrupt")
        return cls(key=key, **arrays)

    @property
    def n(self) -> int:
        return len(self.waad)


def _peaks(values: np.ndarray, spec: PeakSpec) -> np.ndarray:
    found, _ = peaks([None if math.isnan(v) else v for v in values.tolist()], spec.q, spec.rule)
    return np.array(found, dtype=np.int64)


def null_positions(
    rng: np.random.Generator, chosen: np.ndarray, m: int, permutations: int, null: str
) -> np.ndarray:
    """(permutations, k) relocations of ``chosen`` (indices into a domain of size m) under the null.

    ``shift``: every chosen index moves by the same random cyclic offset (spacing kept);
    ``uniform``: a uniform random k-subset of the domain.
    """
    if null == "shift":
        offsets = rng.integers(0, m, size=permutations) if m else np.zeros(permutations, dtype=np.int64)
        return (chosen[None, :] + offsets[:, None]) % max(m, 1)
    return random_subsets(rng, m, chosen.size, permutations)


def coupling_parts(
    traces: list[TraceSeries], spec: PeakSpec, *, permutations: int = 2000, seed: int = 0
) -> tuple[dict[str, RatioParts], list[dict[str, Any]]]:
    """Per-problem parts of the three couplings, and per-problem details (peak positions)."""
    if permutations < 0:
        raise AttnRhythmError(f"bad --permutations {permutations}: it must be >= 0")
    rng = np.random.default_rng(seed)
    cols: dict[str, dict[str, list]] = {
        name: {"num": [], "den": [], "rnum": [], "rden": [], "perm": []} for name in COUPLINGS
    }
    details = []
    for trace in traces:
        waad_peaks = _peaks(trace.waad, spec)
        fai_peaks = _peaks(trace.fai, spec)
        recv_peaks = _peaks(trace.fai_receiver, spec)
        details.append({"key": trace.key, "n": trace.n, "waad_peaks": waad_peaks.tolist(),
                        "fai_peaks": fai_peaks.tolist(), "receiver_peaks": recv_peaks.tolist()})  # fmt: skip
        ctx = (rng, permutations, spec.null)
        _entropy(cols["entropy_at_waad_peaks"], trace, waad_peaks, *ctx)
        _receiver(cols["receiver_vs_global_fai_peaks"], trace, recv_peaks, fai_peaks, *ctx)
        _after(cols["fai_after_waad_peaks"], trace, waad_peaks, fai_peaks, spec.lag, *ctx)
    parts = {}
    for name, c in cols.items():
        perm = np.stack(c["perm"], axis=1) if c["perm"] else np.zeros((permutations, 0))
        parts[name] = RatioParts(c["num"], c["den"], c["rnum"], c["rden"], perm)
    return parts, details


def _add(col: dict[str, list], num: float, den: float, rnum: float, rden: float, perm: np.ndarray) -> None:
    col["num"].append(num)
    col["den"].append(den)
    col["rnum"].append(rnum)
    col["rden"].append(rden)
    col["perm"].append(perm)


def _skip(col: dict[str, list], permutations: int) -> None:
    _add(col, 0.0, 0.0, 0.0, 0.0, np.zeros(permutations))


def _entropy(col, trace: TraceSeries, waad_peaks, rng, permutations: int, null: str) -> None:
    defined = np.flatnonzero(~np.isnan(trace.entropy))
    chosen = np.flatnonzero(np.isin(defined, waad_peaks))  # peaks as indices into `defined`
    if chosen.size == 0:
        _skip(col, permutations)
        return
    ent = trace.entropy[defined]
    perm = ent[null_positions(rng, chosen, defined.size, permutations, null)].mean(1)
    # both nulls put every peak on each domain position equally often: E = mean over the domain
    _add(col, float(ent[chosen].mean()), 1.0, float(ent.mean()), 1.0, perm)


def _receiver(col, trace: TraceSeries, recv_peaks, fai_peaks, rng, permutations: int, null: str) -> None:
    eligible = np.flatnonzero(~np.isnan(trace.fai) & ~np.isnan(trace.fai_receiver))
    chosen = np.flatnonzero(np.isin(eligible, recv_peaks))
    is_global = np.isin(eligible, fai_peaks)
    if chosen.size == 0:
        _skip(col, permutations)
        return
    matches = float(is_global[chosen].sum())
    expected = chosen.size * is_global.sum() / eligible.size  # exact under both nulls
    perm = is_global[null_positions(rng, chosen, eligible.size, permutations, null)].sum(1)
    _add(col, matches, float(chosen.size), float(expected), float(chosen.size), perm.astype(np.float64))


def _hits(fai_peaks: np.ndarray, waad_mask: np.ndarray, lag: int) -> np.ndarray:
    """Hits per row of ``waad_mask`` (R, n): FAI peaks with a WAAD peak in [s - lag, s]."""
    # cumulative sums give the WAAD peaks in each window in O(1)
    csum = np.concatenate([np.zeros((waad_mask.shape[0], 1)), np.cumsum(waad_mask, axis=1)], axis=1)
    lo = np.maximum(fai_peaks - lag, 0)
    window = csum[:, fai_peaks + 1] - csum[:, lo]
    return (window > 0).sum(1).astype(np.float64)


def _mask(rows: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros((rows.shape[0], n))
    if rows.size:
        np.put_along_axis(mask, rows, 1.0, axis=1)
    return mask


def _after(
    col, trace: TraceSeries, waad_peaks, fai_peaks, lag: int, rng, permutations: int, null: str
) -> None:
    if fai_peaks.size == 0:
        _skip(col, permutations)
        return
    n = trace.n
    hits = float(_hits(fai_peaks, _mask(waad_peaks[None, :], n), lag)[0])
    perm = _hits(fai_peaks, _mask(null_positions(rng, waad_peaks, n, permutations, null), n), lag)
    if null == "shift":  # exact expectation: every cyclic offset once
        every = (waad_peaks[None, :] + np.arange(n)[:, None]) % n
        expected = float(_hits(fai_peaks, _mask(every, n), lag).mean())
    else:
        expected = _expected_hits(fai_peaks, n, waad_peaks.size, lag)
    _add(col, hits, float(fai_peaks.size), expected, float(fai_peaks.size), perm)


def _expected_hits(fai_peaks: np.ndarray, n: int, k: int, lag: int) -> float:
    """E[hits] when k WAAD peaks are a uniform k-subset of range(n)."""
    total = 0.0
    for s in fai_peaks.tolist():
        width = min(lag, s) + 1
        # P(no peak in a window of `width` positions) = C(n - width, k) / C(n, k)
        miss = math.comb(n - width, k) / math.comb(n, k) if n - width >= k else 0.0
        total += 1 - miss
    return total


def couplings(
    traces: list[TraceSeries],
    spec: PeakSpec | None = None,
    *,
    permutations: int = 2000,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The three couplings: observed, random, lift, lift interval, permutation p-value each."""
    spec = spec or PeakSpec()
    if not traces:
        raise AttnRhythmError("no analysed responses to measure couplings on: check the inputs")
    parts, details = coupling_parts(traces, spec, permutations=permutations, seed=seed)
    results = {}
    for i, name in enumerate(COUPLINGS):
        summary = summarise(parts[name], bootstrap=bootstrap, seed=seed + 1 + i)
        results[name] = {"label": LABELS[name], **summary, "paper": PAPER[name]}
    return {
        "peaks": {"q": spec.q, "rule": spec.rule, "lag": spec.lag, "null": spec.null},
        "problems": len(traces),
        "couplings": results,
        "per_problem": details,
    }
