"""Table 1 of the paper: perturbing the response at a high-FAI and at a low-FAI position.

Per analysed response (token ids and the global-head FAI curve of a record):

1. **Positions.** Eligible are the response positions s with FAI defined and
   ``margin <= s < n - margin`` (away from both ends). The high position is the eligible
   argmax of FAI, the low position the argmin (ties: the earlier position). A response with
   fewer than two eligible positions is skipped, with the reason recorded.
2. **Alternatives.** One forward pass over the two prefixes (prompt + response tokens before
   s) gives the model's next-token distribution at s; the ``top_k`` most likely tokens other
   than the original token and other than special tokens (EOS etc.) are the alternatives.
3. **Continuations.** For both positions, the prefix followed by the original token and by
   each alternative is greedy-decoded for ``horizon`` tokens (stopping at EOS), all
   2 * (top_k + 1) sequences in one batch. The reference is the greedy continuation after
   the original token (``reference="greedy"``, the default: only the forced token differs),
   or the sampled response's own next ``horizon`` tokens (``reference="sampled"``).
4. **Similarity.** The Jaccard overlap of the content-word sets of each continuation (the
   forced token itself excluded) and the reference: words are lower-cased runs of letters or
   digits (``[a-z0-9]+``, decimals split), minus :data:`STOPWORDS`; two empty sets give 1.0.
   J_high and J_low are the means over the alternatives.

Study values: mean J_high and J_low (bootstrap 95% intervals over responses), and
Pr(J_high < J_low) over responses, strict (ties count as "not lower" and are reported), with
its Wilson 95% interval and an exact two-sided sign test (ties excluded).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.generate import generate
from attnrhythm.padding import left_pad
from attnrhythm.studies.statistics import bootstrap_mean_ci, sign_test, wilson_interval

#: Function words ignored by the content-word Jaccard: articles, pronouns, auxiliaries,
#: prepositions, conjunctions and common adverbs (English). Numbers and all other words count.
STOPWORDS = frozenset(
    """
    a an the this that these those it its it's they them their there here
    i me my we us our you your he him his she her who whom whose which what
    is are was were be been being am do does did done doing have has had having
    will would shall should can could may might must
    of in on at by for with about into onto from to up down out over under
    and or but nor so yet if then than because as while until when where how why
    not no yes also too very just only again all any each both some such own same
    s t ll ve re d m let lets
    """.split()
)

REFERENCES = ("greedy", "sampled")
PAPER = {"jaccard_high": 0.534, "jaccard_low": 0.631, "pr_high_lower": 0.8714, "trials": 70}

_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> set[str]:
    """Lower-cased ``[a-z0-9]+`` words of ``text`` minus :data:`STOPWORDS`."""
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; 1.0 when both are empty."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


@dataclass
class PerturbConfig:
    top_k: int = 3
    horizon: int = 64
    margin: int = 5
    reference: str = "greedy"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise AttnRhythmError(f"bad --top-k {self.top_k}: it must be >= 1")
        if self.horizon < 1:
            raise AttnRhythmError(f"bad --horizon {self.horizon}: it must be >= 1")
        if self.margin < 0:
            raise AttnRhythmError(f"bad --margin {self.margin}: it must be >= 0")
        if self.reference not in REFERENCES:
            raise AttnRhythmError(
                f"unknown --reference '{self.reference}': use one of {', '.join(REFERENCES)}"
            )


def pick_positions(fai: list[Any], margin: int) -> tuple[int, int] | str:
    """(high, low) FAI positions away from the ends, or the reason there are none."""
    n = len(fai)
    eligible = [
        (s, float(v))
        for s, v in enumerate(fai)
        if v is not None and math.isfinite(float(v)) and margin <= s < n - margin
    ]
    if len(eligible) < 2:
        return f"fewer than 2 positions with FAI defined and >= {margin} tokens from both ends"
    high = max(eligible, key=lambda sv: (sv[1], -sv[0]))[0]
    low = min(eligible, key=lambda sv: (sv[1], sv[0]))[0]
    if high == low:  # a flat curve
        return "FAI is constant on the eligible positions"
    return high, low


@torch.no_grad()
def _next_token_candidates(model: Any, prefixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """Next-token log-probabilities after each prefix, (B, vocab), one left-padded forward."""
    device = next(model.parameters()).device
    ids, mask, position_ids = left_pad(prefixes, pad_id)
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids.to(device),
        "use_cache": False,
    }
    try:
        out = model(**inputs, logits_to_keep=1)
    except TypeError:  # models without logits_to_keep compute every position's logits
        out = model(**inputs)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()


def alternatives(logp: torch.Tensor, original: int, k: int, banned: set[int]) -> list[int]:
    """The k most likely tokens other than ``original`` and ``banned`` (ties: lower id first)."""
    size = min(logp.numel(), k + len(banned) + 1)
    top = torch.topk(logp, size).indices.tolist()
    ranked = sorted(top, key=lambda i: (-float(logp[i]), i))
    return [t for t in ranked if t != original and t not in banned][:k]


def perturb_record(
    model: Any,
    tokenizer: Any,
    record: dict[str, Any],
    config: PerturbConfig,
    known: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One trial: positions, alternatives, continuations and Jaccard overlaps (see module doc).

    ``known``: position -> the entry an earlier trial of the same token sequence computed there
    (with its ``config``); such a position is reused when its config equals ``config``."""
    key = str(record.get("key", record.get("id", "?")))
    ids = [int(i) for i in record["input_ids"]]
    r0 = int(record["response_start"])
    response = ids[r0:]
    fai = record.get("metrics", {}).get("fai")
    if not isinstance(fai, list) or len(fai) != len(response):
        raise AttnRhythmError(f"record {key} has no FAI curve matching its response: rerun analyze")
    trial: dict[str, Any] = {"key": key, "n": len(response), **asdict(config)}
    picked = pick_positions(fai, config.margin)
    if isinstance(picked, str):
        trial["skipped"] = picked
        return trial
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    banned = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    chosen = {"high": picked[0], "low": picked[1]}
    reused = {}
    for which, s in chosen.items():
        entry = (known or {}).get(s)
        if entry is not None and entry.get("config") == asdict(config):
            reused[which] = {k: v for k, v in entry.items() if k != "config"} | {"fai": float(fai[s])}
    positions = {which: s for which, s in chosen.items() if which not in reused}
    trial.update(reused)
    if not positions:
        return trial
    logps = _next_token_candidates(model, [ids[: r0 + s] for s in positions.values()], pad_id)
    batch: list[list[int]] = []
    layout: list[tuple[str, int]] = []  # (which, alternative index; -1 = original token)
    alts: dict[str, list[int]] = {}
    for (which, s), logp in zip(positions.items(), logps):
        alts[which] = alternatives(logp, response[s], config.top_k, banned)
        for j, tok in enumerate([response[s], *alts[which]]):
            batch.append(ids[: r0 + s] + [tok])
            layout.append((which, j - 1))
    continuations = generate(model, tokenizer, batch, max_new_tokens=config.horizon, temperature=0.0)
    texts: dict[str, dict[int, str]] = {"high": {}, "low": {}}
    for (which, j), cont in zip(layout, continuations):
        texts[which][j] = tokenizer.decode(cont, skip_special_tokens=True)
    for which, s in positions.items():
        if config.reference == "sampled":
            reference = tokenizer.decode(response[s + 1 : s + 1 + config.horizon], skip_special_tokens=True)
        else:
            reference = texts[which][-1]
        ref_words = content_words(reference)
        scores = [jaccard(content_words(texts[which][j]), ref_words) for j in range(len(alts[which]))]
        trial[which] = {
            "position": s,
            "fai": float(fai[s]),
            "original": tokenizer.decode([response[s]]),
            "alternatives": [tokenizer.decode([t]) for t in alts[which]],
            "jaccard": scores,
            "mean_jaccard": float(np.mean(scores)) if scores else None,
            "reference": reference,
            "continuations": [texts[which][j] for j in range(len(alts[which]))],
        }
    return trial


def _complete(trial: dict[str, Any]) -> bool:
    return "skipped" not in trial and all(trial[w]["mean_jaccard"] is not None for w in ("high", "low"))


def summarise_trials(trials: list[dict[str, Any]], *, bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean Jaccard high vs low with intervals, Pr(high < low) with its Wilson interval, sign test."""
    used = [t for t in trials if _complete(t)]
    high = np.array([t["high"]["mean_jaccard"] for t in used], dtype=np.float64)
    low = np.array([t["low"]["mean_jaccard"] for t in used], dtype=np.float64)
    wins = int((high < low).sum())
    losses = int((high > low).sum())
    ties = len(used) - wins - losses
    n = len(used)
    return {
        "trials": n,
        "skipped": len(trials) - n,
        "jaccard_high": float(high.mean()) if n else None,
        "jaccard_high_ci": bootstrap_mean_ci(high, bootstrap=bootstrap, seed=seed),
        "jaccard_low": float(low.mean()) if n else None,
        "jaccard_low_ci": bootstrap_mean_ci(low, bootstrap=bootstrap, seed=seed + 1),
        "difference_low_minus_high": float((low - high).mean()) if n else None,
        "difference_ci": bootstrap_mean_ci(low - high, bootstrap=bootstrap, seed=seed + 2),
        "pr_high_lower": wins / n if n else None,
        "pr_high_lower_ci": wilson_interval(wins, n),
        "high_lower": wins,
        "high_higher": losses,
        "ties": ties,
        "sign_test_p": sign_test(wins, losses),
        "paper": PAPER,
    }
