"""Fused rhythm credit in verl: the statistics come from the actor's own ``compute_log_prob`` forward.

verl's engine cuts a batch into micro-batches (with ``use_dynamic_bsz`` it regroups and reorders
rows by length) and runs the actor once per micro-batch, in one of two layouts:

* padded (``use_remove_padding=false``): ``input_ids``/``attention_mask`` (b, L), each sequence
  (prompt + response) one right-padded row;
* packed (``use_remove_padding=true``): ``input_ids`` (1, total), the sequences back to back,
  ``position_ids`` restarting at each one, no attention mask (:mod:`.packed`).

:class:`FusedCapture` hooks the actor module (PyTorch forward hooks, so nothing of verl is
replaced): before each forward it reads the sequences from the forward's own inputs, finds each
one's row of the rollout batch by its tokens (so any regrouping maps back to the right row),
weights the response rows and activates a capture; after the forward it turns the capture into
per-row results. The model runs the ``attnrhythm`` attention during the call, which keeps every
layer's output SDPA's (``own_output=False``), so verl's log-probs are those of its ``sdpa`` forward.
Rows no forward carried are reported (:attr:`FusedCapture.missing`) and the caller falls back to
the separate forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from attnrhythm.analyze import Analyzer, TraceInput, TraceResult
from attnrhythm.attention.capture import Capture, capturing
from attnrhythm.integrations.verl.layout import PaddedRollout
from attnrhythm.integrations.verl.packed import PackedCapture, packed_starts
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.rollout.credit import rollout_traces

Sequence = tuple[int, list[int]]  # (start in its grid row, tokens) of one sequence of a forward


def static_reason(settings: RhythmCreditConfig, engine: Any) -> str:
    """Why verl's ``compute_log_prob`` forward cannot carry this credit ('' when it can)."""
    if settings.strategy == "entropy":
        return "the entropy strategy needs the untempered entropy of the analysis' own LM head"
    if settings.analysis_config().heads_refresh:
        return "heads: refresh:K collects the head spans in the separate forward"
    if int(getattr(engine, "ulysses_sequence_parallel_size", 1) or 1) > 1:
        return "Ulysses sequence parallelism splits each sequence over ranks"
    return ""


class FusedCapture:
    """Captures the analysis of a rollout batch in the forwards of its module, micro-batch by micro-batch.

    ``rollout`` is the rank's slice of the batch on the completion grid; the rows
    :func:`rollout_traces` would analyse are looked up by their tokens (prompt + response). After
    the forwards, :attr:`results` holds (batch row, result) per captured row and :attr:`missing`
    the analysable rows no forward carried; :attr:`reason` says why a forward could not be read.
    """

    def __init__(self, analyzer: Analyzer, rollout: PaddedRollout) -> None:
        self.analyzer = analyzer
        self.wanted: dict[tuple[int, ...], list[tuple[int, TraceInput]]] = {}
        traces = rollout_traces(
            analyzer, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask
        )
        for b, trace in traces:
            self.wanted.setdefault(tuple(trace.input_ids), []).append((b, trace))
        self.results: list[tuple[int, TraceResult]] = []
        self.reason = ""
        self._pending: tuple[ExitStack, Capture, list[tuple[int, int, int, TraceInput]]] | None = None

    @property
    def missing(self) -> int:
        """Analysable rows that no forward carried."""
        return sum(len(rows) for rows in self.wanted.values())

    def _sequences(self, kwargs: dict[str, Any]) -> tuple[list[Sequence], list[int] | None] | None:
        """(start in its grid row, tokens) per sequence, and the packed offsets (None: padded)."""
        ids = kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        if ids is None or ids.dim() != 2:
            self.reason = "verl's forward got no 2D input_ids (embeddings or a vision-language batch)"
            return None
        if mask is None:
            if ids.shape[0] != 1 or positions is None or positions.dim() != 2:
                self.reason = "a packed forward without (1, total) position_ids (e.g. 3D rope positions)"
                return None
            offsets = packed_starts(positions)
            flat = ids[0].tolist()
            return [(0, flat[s:e]) for s, e in zip(offsets, offsets[1:])], offsets
        if mask.dim() != 2:
            self.reason = "verl's forward got a mask other than a 2D padding mask"
            return None
        out = []
        for row, live in zip(ids.tolist(), mask.bool().tolist()):
            where = [i for i, on in enumerate(live) if on]
            if not where or where[-1] - where[0] + 1 != len(where):
                self.reason = "a padded row whose tokens are not one contiguous run"
                return None
            out.append((where[0], row[where[0] : where[-1] + 1]))
        return out, None

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: weight the response rows of the batch's sequences, start a capture."""
        found = self._sequences(kwargs)
        if found is None:
            return
        sequences, offsets = found
        ids = kwargs["input_ids"]
        if offsets is None:
            width, live = ids.shape[1], kwargs["attention_mask"].bool()
        else:
            width = max(e - s for s, e in zip(offsets, offsets[1:]))
            live = torch.zeros(len(sequences), width, dtype=torch.bool, device=ids.device)
            for i, (_, tokens) in enumerate(sequences):
                live[i, : len(tokens)] = True
        weight = torch.zeros(len(sequences), width, dtype=torch.float32)
        todo = []
        for i, (start, tokens) in enumerate(sequences):
            rows = self.wanted.get(tuple(tokens))
            if not rows:
                continue
            b, trace = rows.pop(0)
            first = start + trace.response_start
            weight[i, first : start + len(tokens)] = 1.0
            todo.append((b, i, first, trace))
        capture = self.analyzer.new_capture(weight.to(ids.device), live=live)
        capture.own_output = False  # every layer's output stays SDPA's: verl's log-probs unchanged
        if offsets is not None:
            capture = PackedCapture.around(capture, offsets)
        stack = ExitStack()
        stack.enter_context(capturing(capture))
        self._pending = (stack, capture, todo)

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: the capture's results for the rows this forward carried."""
        if self._pending is None:
            return
        stack, capture, todo = self._pending
        self._pending = None
        stack.close()
        if todo:
            results = self.analyzer.results_from_capture(
                capture, [t for *_, t in todo], [i for _, i, _, _ in todo], [f for _, _, f, _ in todo]
            )
            self.results.extend((b, res) for (b, *_), res in zip(todo, results))

    def close(self) -> None:
        """Deactivate a capture a failed forward left active."""
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None


@contextmanager
def capturing_forwards(module: torch.nn.Module, fused: FusedCapture) -> Iterator[FusedCapture]:
    """Run ``fused``'s hooks around every forward of ``module`` inside the block."""
    hooks = [
        module.register_forward_pre_hook(fused.before, with_kwargs=True),
        module.register_forward_hook(fused.after, with_kwargs=True),
    ]
    try:
        yield fused
    finally:
        for hook in hooks:
            hook.remove()
        fused.close()
