"""Table 1 on the same responses under two settings (e.g. sinks kept vs excluded): a paired test.

    python experiments/perturb_paired.py KEEP/trials.jsonl EXCLUDE/trials.jsonl

Both files are ``trials.jsonl`` of ``attnrhythm study perturb`` runs on the same responses
(matched by ``key``; trials skipped in either run are left out). Per response the outcome is
"high < low" (mean Jaccard at the high-FAI position strictly below the low-FAI one, as in the
study). Prints one JSON object: the 2 x 2 table of outcomes, the exact McNemar test (a two-sided
binomial test of the discordant pairs, ``scipy.stats.binomtest``), the Wilcoxon signed-rank test
of the per-response gap J_low - J_high between the runs (``scipy.stats.wilcoxon``), and how often
each position is the same in both runs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.stats import binomtest, wilcoxon

from attnrhythm.records import read_records
from attnrhythm.studies.perturb import _complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    first = {str(t["key"]): t for t in read_records(args.first) if _complete(t)}
    pairs = [
        (first[str(t["key"])], t)
        for t in read_records(args.second)
        if _complete(t) and str(t["key"]) in first
    ]
    if not pairs:
        raise SystemExit(
            "error: no response has a complete trial in both files: pass two runs on the same responses"
        )
    win = np.array([[a["high"]["mean_jaccard"] < a["low"]["mean_jaccard"] for a, _ in pairs],
                    [b["high"]["mean_jaccard"] < b["low"]["mean_jaccard"] for _, b in pairs]])  # fmt: skip
    gap = np.array([[a["low"]["mean_jaccard"] - a["high"]["mean_jaccard"] for a, _ in pairs],
                    [b["low"]["mean_jaccard"] - b["high"]["mean_jaccard"] for _, b in pairs]])  # fmt: skip
    only_first = int((win[0] & ~win[1]).sum())
    only_second = int((~win[0] & win[1]).sum())
    discordant = only_first + only_second
    change = gap[1] - gap[0]
    out = {
        "responses": len(pairs),
        "high_lower": {"first": int(win[0].sum()), "second": int(win[1].sum())},
        "table": {
            "both": int((win[0] & win[1]).sum()),
            "first_only": only_first,
            "second_only": only_second,
            "neither": int((~win[0] & ~win[1]).sum()),
        },
        "mcnemar_exact_p": binomtest(only_first, discordant, 0.5).pvalue if discordant else 1.0,
        "mean_gap": {"first": float(gap[0].mean()), "second": float(gap[1].mean())},
        "wilcoxon_gap_p": float(wilcoxon(change).pvalue) if np.any(change != 0) else 1.0,
        "same_position": {
            w: float(np.mean([a[w]["position"] == b[w]["position"] for a, b in pairs]))
            for w in ("high", "low")
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
