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
from types import SimpleNamespace

import torch

from attnrhythm.analyze import Analyzer
from attnrhythm.integrations.verl.layout import padded_rollout, response_layout
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.rollout.credit import rollout_gamma


@contextmanager
def streaming_analyzer(model: torch.nn.Module, settings: RhythmCreditConfig) -> Iterator[Analyzer]:
    """An :class:`Analyzer` on ``model``; the model's attention implementation is restored on exit."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    try:
        yield Analyzer(model, settings.analysis_config())
    finally:
        if previous is not None and getattr(config, "_attn_implementation", None) != previous:
            model.set_attn_implementation(previous)


def batch_credit(
    model: torch.nn.Module,
    data: Mapping[str, torch.Tensor],
    settings: RhythmCreditConfig,
    *,
    step: int = 0,
    rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma for a verl rollout batch (laid out like its ``responses``) and its counts row by row.

    ``model`` is the current policy as verl's engine holds it (a transformers causal LM, possibly
    sharded with FSDP2); ``data`` has ``prompts``, ``responses``, ``response_mask`` and, in the
    padded layout, ``attention_mask``. Positions outside ``response_mask`` (padding, tool output)
    keep gamma = 1. ``step``/``rank`` vary the random baseline's subsets. Every rank of the process
    group must call this together (``rollout_gamma`` agrees on the number of forwards). The counts
    are (B, len(COUNT_KEYS)) float64, one row per sequence (:attr:`RolloutCredit.row_counts`), so the
    trainer can leave verl's filler rows out of the logged metrics.
    """
    rollout = padded_rollout(data)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    kwargs = dict(batch_size=settings.batch_size, seed_base=(step, rank))
    if settings.strategy == "none":
        # plain GRPO: no forward; rollout_gamma only reads the credit config to count the tokens
        no_model = SimpleNamespace(config=settings.analysis_config(), max_len=None)
        credit = rollout_gamma(no_model, "none", *args, rollout.loss_mask, **kwargs)  # type: ignore[arg-type]
    else:
        with streaming_analyzer(model, settings) as analyzer:
            credit = rollout_gamma(analyzer, settings.strategy, *args, rollout.loss_mask, **kwargs)
    return response_layout(credit.gamma, rollout), credit.row_counts
