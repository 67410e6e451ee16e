"""Rhythm credit of a rollout batch from the live actor module of a verl worker.

:func:`batch_credit` reads a verl batch (either layout, :mod:`.layout`), runs
:func:`attnrhythm.rollout.credit.rollout_gamma` on the actor's own module and returns gamma in the
batch's layout. Two things make that safe inside verl's FSDP engine:

* **Lockstep forwards.** Under FSDP2 every forward all-gathers parameters, so every rank must run
  the same number of them. ``rollout_gamma`` skips rows (responses under 2 tokens, sequences past
  the context) and so may need fewer chunks on one rank than on another; it agrees on the number
  of forwards over the ranks before the first one (:func:`attnrhythm.attention.sharding.agreed_count`) and
  pads with a 3-token dummy trace, and :func:`attnrhythm.attention.sharding.full_parameters` keeps a
  separately sharded LM head gathered for the whole analysis, so the collectives of a credit call
  do not depend on the data.
* **The attention implementation is restored.** The streaming analysis switches the model to the
  ``attnrhythm`` attention (plain SDPA outside a capture); verl's own forwards pack sequences
  without padding and need their implementation (``flash_attention_2`` or ``sdpa`` with verl's
  patches), so the previous one is put back after the analysis.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from attnrhythm.analyze import Analyzer, TraceResult
from attnrhythm.config import AnalysisConfig
from attnrhythm.integrations.verl.layout import PaddedRollout, padded_rollout, response_layout
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.rollout.credit import RolloutCredit, credit_from_results, rollout_gamma
from attnrhythm.rollout.heads import refreshed_config


@contextmanager
def streaming_analyzer(model: torch.nn.Module, config: AnalysisConfig) -> Iterator[Analyzer]:
    """An :class:`Analyzer` on ``model``; the model's attention implementation is restored on exit."""
    model_config = getattr(model, "config", None)
    previous = getattr(model_config, "_attn_implementation", None)
    try:
        yield Analyzer(model, config)
    finally:
        if previous is not None and getattr(model_config, "_attn_implementation", None) != previous:
            model.set_attn_implementation(previous)


@dataclass
class BatchCredit:
    """The credit of one rank's slice: gamma in the batch's layout, counts and head spans per row.

    ``spans`` (B, L, H) float32 holds each analysed row's head span d[l,h] (NaN for rows not
    analysed) over the analysed ``layers``; both are None unless asked for (``heads: refresh:K``).
    """

    gamma: torch.Tensor
    counts: torch.Tensor
    spans: torch.Tensor | None = None
    layers: list[int] | None = None


def batch_credit(
    model: torch.nn.Module,
    data: Mapping[str, torch.Tensor],
    settings: RhythmCreditConfig,
    *,
    step: int = 0,
    rank: int = 0,
    head_set: dict[str, Any] | None = None,
) -> BatchCredit:
    """gamma for a verl rollout batch (laid out like its ``responses``) and its counts row by row.

    ``model`` is the current policy as verl's engine holds it (a transformers causal LM, possibly
    sharded with FSDP2); ``data`` has ``prompts``, ``responses``, ``response_mask`` and, in the
    padded layout, ``attention_mask``. Positions outside ``response_mask`` (padding, tool output)
    keep gamma = 1. ``step``/``rank`` vary the random baseline's subsets. With ``heads: refresh:K``
    the analysis uses ``head_set`` (the trainer's refreshed head set; None: classes per sequence)
    and the result carries every row's head spans for the next refresh. Every rank of the process
    group must call this together (``rollout_gamma`` agrees on the number of forwards). The counts
    are (B, len(COUNT_KEYS)) float64, one row per sequence (:attr:`RolloutCredit.row_counts`), so the
    trainer can leave verl's filler rows out of the logged metrics.
    """
    rollout = padded_rollout(data)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    kwargs = dict(batch_size=settings.batch_size, seed_base=(step, rank))
    config = refreshed_config(settings.analysis_config(), head_set)
    spans = layers = None
    if settings.strategy == "none":
        # plain GRPO: no forward; rollout_gamma only reads the credit config to count the tokens
        no_model = SimpleNamespace(config=config, max_len=None)
        credit = rollout_gamma(no_model, "none", *args, rollout.loss_mask, **kwargs)  # type: ignore[arg-type]
    else:
        with streaming_analyzer(model, config) as analyzer:
            credit = rollout_gamma(analyzer, settings.strategy, *args, rollout.loss_mask, **kwargs)
            if settings.analysis_config().heads_refresh:
                layers = list(analyzer.layers)
                spans = row_spans(credit, rollout.prompt_ids.shape[0], len(layers), model)
    return BatchCredit(response_layout(credit.gamma, rollout), credit.row_counts, spans, layers)


def row_spans(credit: RolloutCredit, rows: int, layers: int, model: torch.nn.Module) -> torch.Tensor:
    """(rows, layers, heads) float32: each analysed row's head spans, NaN for the other rows."""
    heads = int(model.config.num_attention_heads)
    out = torch.full((rows, layers, heads), float("nan"), dtype=torch.float32)
    for row, span in zip(credit.span_rows, credit.spans):
        out[row] = torch.as_tensor(span, dtype=torch.float32).reshape(layers, heads)
    return out


def captured_credit(
    results: list[tuple[int, TraceResult]],
    rollout: PaddedRollout,
    settings: RhythmCreditConfig,
    *,
    step: int = 0,
    rank: int = 0,
) -> BatchCredit:
    """:func:`batch_credit`'s result from results captured in verl's own forward (:mod:`.fused`).

    ``results`` holds (row, result) per analysed row of ``rollout``; every other row keeps
    gamma = 1, as in :func:`batch_credit`, whose seeds (``step``, ``rank``) it shares. No head
    spans (``heads: refresh:K`` takes the separate forward).
    """
    credit = credit_from_results(
        settings.analysis_config().credit,
        settings.strategy,
        results,
        rollout.completion_ids,
        rollout.completion_mask,
        rollout.loss_mask,
        seed_base=(step, rank),
    )
    return BatchCredit(response_layout(credit.gamma, rollout), credit.row_counts)
