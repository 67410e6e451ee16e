"""Per-token credit for a batch of GRPO rollouts, in the padded layout TRL uses.

TRL keeps a rollout batch as left-padded prompts ``prompt_ids``/``prompt_mask`` (B, P) and
right-padded completions ``completion_ids``/``completion_mask`` (B, T). :func:`rollout_gamma`
strips the padding, runs the streaming analysis over ``prompt + completion`` (one no-grad
forward per chunk of sequences, the first completion token being the first response token),
and lays each sequence's gamma back onto the (B, T) completion grid: column j of row b is the
credit of ``completion_ids[b, j]``, i.e. response token j of that trace.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import torch

from ..analyze import Analyzer, TraceInput
from ..credit import CreditConfig, gamma

ROLE_NAMES: tuple[str, ...] = ("preplan", "anchor", "dominated", "intro")


@dataclass
class RolloutCredit:
    """gamma on the completion grid plus token counts for logging.

    ``counts`` holds sums over the tokens of ``loss_mask``: ``tokens``, ``gamma_sum``,
    ``amplified`` (gamma > 1) and one entry per role; ``sequences``/``analysed`` count rows.
    """

    gamma: torch.Tensor  # (B, T) float32, 1 where no credit applies
    counts: dict[str, float] = field(default_factory=dict)


def sequence_seed(base: int, step: int, rank: int, index: int) -> int:
    """A deterministic seed for one sequence of the random baseline (a fresh subset per sequence)."""
    return zlib.crc32(f"{base}:{step}:{rank}:{index}".encode())


def completion_length(mask_row: torch.Tensor) -> int:
    """Tokens up to the last unmasked completion position (0 for a fully masked row)."""
    nz = torch.nonzero(mask_row, as_tuple=False)
    return 0 if nz.numel() == 0 else int(nz.max()) + 1


def rollout_gamma(
    analyzer: Analyzer,
    strategy: str,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    seed_base: tuple[int, int] = (0, 0),
) -> RolloutCredit:
    """gamma (B, T) for ``strategy`` aligned with ``completion_ids``.

    Rows whose completion has fewer than 2 tokens (after ``completion_mask``), whose prompt is
    empty, or whose length exceeds the model's context keep gamma = 1, and so do positions outside
    ``loss_mask`` (default ``completion_mask``). The credit parameters (and the roles counted for
    logging) are ``analyzer.config.credit``. ``strategy == "none"``
    returns ones without running the model. ``seed_base`` = (step, rank) varies the random
    baseline's subset between batches and processes.
    """
    bsz, width = completion_ids.shape
    credit: CreditConfig = analyzer.config.credit  # the roles come from the same config
    out = torch.ones(bsz, width, dtype=torch.float32)
    loss_mask = completion_mask if loss_mask is None else loss_mask
    lm = loss_mask.detach().to("cpu").bool()
    counts: dict[str, float] = {
        "sequences": float(bsz),
        "analysed": 0.0,
        "tokens": float(lm.sum()),
        **{name: 0.0 for name in ROLE_NAMES},
    }
    todo: list[tuple[int, TraceInput]] = []
    if strategy != "none":
        p_ids, p_mask = prompt_ids.detach().cpu(), prompt_mask.detach().cpu().bool()
        c_ids, c_mask = completion_ids.detach().cpu(), completion_mask.detach().cpu()
        for b in range(bsz):
            prompt = p_ids[b][p_mask[b]].tolist()
            n = completion_length(c_mask[b])
            if n < 2 or not prompt:
                continue
            ids = prompt + c_ids[b, :n].tolist()
            if analyzer.max_len is not None and len(ids) > analyzer.max_len:
                continue
            todo.append((b, TraceInput(ids, response_start=len(prompt))))
    # similar lengths together: less padding inside each credit forward
    todo.sort(key=lambda item: len(item[1].input_ids))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        results = analyzer.analyze([trace for _, trace in chunk])
        for (b, _trace), res in zip(chunk, results):
            if strategy == "random":  # a fresh subset per sequence, not the record's fixed seed
                cfg = replace(credit, seed=sequence_seed(credit.seed, seed_base[0], seed_base[1], b))
                g = gamma(
                    strategy, waad=res.waad, fai=res.fai, delta=res.delta, entropy=res.entropy, config=cfg
                )
            else:
                g = res.gamma[strategy]  # computed by the analyzer with this same credit config
            n = g.shape[0]
            out[b, :n] = g.float()
            counts["analysed"] += 1
            row_mask = lm[b, :n]
            for name in ROLE_NAMES:
                idx = getattr(res.roles, name)
                if idx:
                    counts[name] += float(row_mask[torch.tensor(idx, dtype=torch.long)].sum())
    out = torch.where(lm, out, torch.ones_like(out))  # masked positions: no credit
    counts["gamma_sum"] = float(out[lm].sum())
    counts["amplified"] = float((out[lm] > 1).sum())
    return RolloutCredit(gamma=out.to(completion_ids.device), counts=counts)
