"""Files a study writes: ``results.json`` (atomic), ``results.md`` (our numbers beside the
paper's) and a plot (PNG, matplotlib Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from attnrhythm.studies.couplings import COUPLINGS


def _num(x: Any, pct: bool = False, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if pct:
        return f"{100 * x:+.2f}%"
    return f"{x:.{digits}f}"


def _ci(ci: Any, pct: bool = False) -> str:
    if not ci:
        return "n/a"
    return f"[{_num(ci[0], pct)}, {_num(ci[1], pct)}]"


def _p(p: Any) -> str:
    return "n/a" if p is None else f"{p:.4f}"


def couplings_markdown(results: dict[str, Any]) -> str:
    peaks = results["peaks"]
    lines = [
        "| Coupling | observed | random | lift [95% CI] | p (permutation) | problems "
        "| paper observed | paper random | paper lift |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in COUPLINGS:
        r = results["couplings"][name]
        paper = r["paper"]
        lines.append(
            f"| {r['label']} | {_num(r['observed'])} | {_num(r['random'])} | {_num(r['lift'], True)} "
            f"{_ci(r['lift_ci'], True)} | {_p(r['p_value'])} | {r['problems']} | {paper['observed']:.4f} "
            f"| {paper['random']:.4f} | {100 * paper['lift']:+.2f}% |"
        )
    meta = results.get("run", {})
    lines += [
        "",
        f"Model: {meta.get('model', '?')}; problems: {meta.get('problems', '?')} "
        f"(n = {results['problems']} analysed responses, T = {meta.get('temperature', '?')}, "
        f"seed {meta.get('seed', '?')}). Peaks: local maxima among the top q = {peaks['q']} "
        f"(rule {peaks['rule']}); coupling 3 lag {peaks['lag']}; null: {peaks['null']}; "
        f"{results['couplings'][COUPLINGS[0]].get('permutations', 0)} permutations, "
        f"{results['couplings'][COUPLINGS[0]].get('bootstrap', 0)} bootstrap resamples. "
        "Paper: Qwen3-4B-Base, 70 GSM8K questions, T = 0.7.",
    ]
    return "\n".join(lines) + "\n"


def perturb_markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    paper = s["paper"]
    lines = [
        "| Measure | ours [95% CI] | paper |",
        "|---|---|---|",
        f"| Mean Jaccard, high-FAI position | {_num(s['jaccard_high'])} {_ci(s['jaccard_high_ci'])} "
        f"| {paper['jaccard_high']:.3f} |",
        f"| Mean Jaccard, low-FAI position | {_num(s['jaccard_low'])} {_ci(s['jaccard_low_ci'])} "
        f"| {paper['jaccard_low']:.3f} |",
        f"| Pr(high < low) | {_num(s['pr_high_lower'])} {_ci(s['pr_high_lower_ci'])} "
        f"| {paper['pr_high_lower']:.4f} |",
        f"| Trials (ties, skipped) | {s['trials']} ({s['ties']}, {s['skipped']}) | {paper['trials']} |",
        f"| Sign test p (two-sided) | {_p(s['sign_test_p'])} | |",
    ]
    meta = results.get("run", {})
    cfg = results.get("config", {})
    lines += [
        "",
        f"Model: {meta.get('model', '?')}; problems: {meta.get('problems', '?')} "
        f"(T = {meta.get('temperature', '?')}, seed {meta.get('seed', '?')}); top-k {cfg.get('top_k')}, "
        f"horizon {cfg.get('horizon')} tokens, margin {cfg.get('margin')}, "
        f"reference: {cfg.get('reference')}. "
        "Paper: 70 problems.",
    ]
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def couplings_plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: our lift with its 95% interval next to the paper's lift, per coupling."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    names = [
        "entropy @\nWAAD peaks",
        "receiver FAI peaks\n= global FAI peaks",
        "FAI peaks at/after\nWAAD peaks",
    ]
    for i, name in enumerate(COUPLINGS):
        r = results["couplings"][name]
        ours = r["lift"] if r["lift"] is not None else float("nan")
        ci = r.get("lift_ci")
        err = [[ours - ci[0]], [ci[1] - ours]] if ci and math.isfinite(ours) else None
        ax.bar(i - 0.18, 100 * ours, 0.34, color="#3b6ea8", label="ours" if i == 0 else None,
               yerr=None if err is None else [[100 * err[0][0]], [100 * err[1][0]]], capsize=4)  # fmt: skip
        ax.bar(i + 0.18, 100 * r["paper"]["lift"], 0.34, color="#c8c8c8", label="paper" if i == 0 else None)
        p = r.get("p_value")
        if p is not None and math.isfinite(ours):
            top = max(ours, ci[1]) if ci else ours
            ax.annotate(f"p={p:.3g}", (i - 0.18, 100 * top), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7)  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(COUPLINGS)), names, fontsize=8)
    ax.set_ylabel("lift over random (%)")
    run = results.get("run", {})
    ax.set_title(f"Rhythm couplings: {run.get('model', '?')}, n = {results['problems']} (bars: 95% CI)",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def perturb_plot(results: dict[str, Any], trials: list[dict[str, Any]], path: Path) -> None:
    """Per-trial mean Jaccard at the low-FAI vs the high-FAI position, and the two means."""
    plt = _plt()
    used = [t for t in trials if "skipped" not in t]
    high = [t["high"]["mean_jaccard"] for t in used]
    low = [t["low"]["mean_jaccard"] for t in used]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.8), dpi=120)
    a.scatter(low, high, s=14, color="#3b6ea8", alpha=0.75)
    a.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    a.set_xlim(-0.02, 1.02)
    a.set_ylim(-0.02, 1.02)
    a.set_xlabel("Jaccard after forcing at the low-FAI position")
    a.set_ylabel("... at the high-FAI position")
    a.set_title("one dot per response (below the line: high < low)", fontsize=8)
    s = results["summary"]
    vals = [s["jaccard_high"] or 0, s["jaccard_low"] or 0]
    cis = [s["jaccard_high_ci"], s["jaccard_low_ci"]]
    err = [
        [v - c[0] if c else 0 for v, c in zip(vals, cis)],
        [c[1] - v if c else 0 for v, c in zip(vals, cis)],
    ]
    b.bar([0, 1], vals, 0.5, color=["#b5542d", "#3b6ea8"], yerr=err, capsize=4, label="ours")
    paper = s["paper"]
    b.scatter([0, 1], [paper["jaccard_high"], paper["jaccard_low"]], marker="D", color="black", zorder=3,
              label="paper")  # fmt: skip
    b.set_xticks([0, 1], ["high FAI", "low FAI"])
    b.set_ylim(0, 1)
    b.set_ylabel("mean Jaccard of content words")
    pr = s["pr_high_lower"]
    b.set_title(f"Pr(high < low) = {pr:.3f}" if pr is not None else "no trials", fontsize=9)
    b.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
