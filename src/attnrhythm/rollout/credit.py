"""Per-token credit for a batch of GRPO rollouts, in the padded layout TRL uses.

TRL keeps a rollout batch as left-padded prompts ``prompt_ids``/``prompt_mask`` (B, P) and
right-padded completions ``completion_ids``/``completion_mask`` (B, T). Two ways to the credit:

* :func:`rollout_gamma` (the *separate* credit forward) strips the padding and runs the streaming
  analysis over ``prompt + completion`` (one no-grad forward per chunk of sequences, the first
  completion token being the first response token). On an FSDP2-sharded model in a process
  group every rank runs the same number of chunks (ranks with fewer sequences analyse a tiny
  dummy trace), so no collective of the sharded forward waits forever.
* :func:`capturing_rollout` (the *fused* credit) captures the same statistics in a forward that
  someone else runs over TRL's own layout ``cat(prompt, completion)`` (TRL's no-grad forward for
  ``old_per_token_logps``, or its loss forward), response rows weighted; no extra forward.

Either way :func:`credit_from_results` lays each sequence's gamma back onto the (B, T) completion
grid: column j of row b is the credit of ``completion_ids[b, j]``, i.e. response token j of that
trace.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from attnrhythm.analyze import Analyzer, TraceInput, TraceResult
from attnrhythm.attention.capture import capturing
from attnrhythm.attention.sharding import agreed_count
from attnrhythm.method.config import ROLE_NAMES, CreditConfig
from attnrhythm.method.credit import gamma, normalize_gamma

COUNT_KEYS: tuple[str, ...] = ("sequences", "analysed", "tokens", "gamma_sum", "amplified", *ROLE_NAMES)


def rhythm_metrics(totals: Mapping[str, float], seconds: float) -> dict[str, float]:
    """The logged ``rhythm/*`` metrics of a batch from its token counts summed over ranks.

    ``totals`` has :data:`COUNT_KEYS` (missing keys count 0): ``rhythm/gamma_mean`` and
    ``rhythm/amplified_share`` over loss-mask tokens, ``rhythm/<role>_share`` per role,
    ``rhythm/analysed_share`` over sequences, and ``rhythm/seconds`` as given. The TRL trainer and
    the verl trainer mode both log these.
    """
    tokens = float(totals.get("tokens", 0.0))
    denominator = max(tokens, 1.0)
    out = {
        "rhythm/gamma_mean": float(totals.get("gamma_sum", 0.0)) / denominator if tokens else 1.0,
        "rhythm/amplified_share": float(totals.get("amplified", 0.0)) / denominator,
    }
    for name in ROLE_NAMES:
        out[f"rhythm/{name}_share"] = float(totals.get(name, 0.0)) / denominator
    sequences = max(float(totals.get("sequences", 0.0)), 1.0)
    out["rhythm/analysed_share"] = float(totals.get("analysed", 0.0)) / sequences
    out["rhythm/seconds"] = float(seconds)
    return out


@dataclass
class RolloutCredit:
    """gamma on the completion grid plus token counts for logging.

    ``counts`` holds sums over the tokens of ``loss_mask``: ``tokens``, ``gamma_sum``,
    ``amplified`` (gamma > 1) and one entry per role; ``sequences``/``analysed`` count rows.
    ``row_counts`` (B, len(COUNT_KEYS)) float64 holds the same counts row by row, in the order of
    :data:`COUNT_KEYS`, for engines that drop rows (verl's filler rows) before summing.
    """

    gamma: torch.Tensor  # (B, T) float32, 1 where no credit applies
    counts: dict[str, float] = field(default_factory=dict)
    spans: list[torch.Tensor] = field(default_factory=list)  # head span d[l,h] of each analysed row
    row_counts: torch.Tensor | None = None
    span_rows: list[int] = field(default_factory=list)  # the row of each entry of ``spans``


def sequence_seed(base: int, step: int, rank: int, index: int) -> int:
    """A deterministic seed for one sequence of the random baseline (a fresh subset per sequence)."""
    return zlib.crc32(f"{base}:{step}:{rank}:{index}".encode())


def completion_length(mask_row: torch.Tensor) -> int:
    """Tokens up to the last unmasked completion position (0 for a fully masked row)."""
    nz = torch.nonzero(mask_row, as_tuple=False)
    return 0 if nz.numel() == 0 else int(nz.max()) + 1


def rollout_traces(
    analyzer: Analyzer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> list[tuple[int, TraceInput]]:
    """(row, prompt + completion trace) of every row that can be analysed.

    Rows whose completion has fewer than 2 tokens (after ``completion_mask``), whose prompt is
    empty, or whose length exceeds the model's context are left out (they keep gamma = 1).
    """
    todo: list[tuple[int, TraceInput]] = []
    p_ids, p_mask = prompt_ids.detach().cpu(), prompt_mask.detach().cpu().bool()
    c_ids, c_mask = completion_ids.detach().cpu(), completion_mask.detach().cpu()
    for b in range(completion_ids.shape[0]):
        prompt = p_ids[b][p_mask[b]].tolist()
        n = completion_length(c_mask[b])
        if n < 2 or not prompt:
            continue
        ids = prompt + c_ids[b, :n].tolist()
        if analyzer.max_len is not None and len(ids) > analyzer.max_len:
            continue
        todo.append((b, TraceInput(ids, response_start=len(prompt))))
    return todo


def dummy_trace() -> TraceInput:
    """The smallest valid trace (1 prompt + 2 response tokens): a padding forward under FSDP2."""
    return TraceInput([0, 0, 0], response_start=1)


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
    """gamma (B, T) for ``strategy`` aligned with ``completion_ids`` (the separate credit forward).

    Rows that cannot be analysed (see :func:`rollout_traces`) keep gamma = 1, and so do positions
    outside ``loss_mask`` (default ``completion_mask``). The credit parameters (and the roles
    counted for logging) are ``analyzer.config.credit``. ``strategy == "none"`` returns ones
    without running the model. ``seed_base`` = (step, rank) varies the random baseline's subset
    between batches and processes.

    On an FSDP2-sharded model with ``torch.distributed`` initialised, the number of forwards is
    the maximum over ranks: a rank with fewer chunks analyses :func:`dummy_trace` (result unused)
    until it has run as many as the others.
    """
    results: list[tuple[int, TraceResult]] = []
    if strategy != "none":
        todo = rollout_traces(analyzer, prompt_ids, prompt_mask, completion_ids, completion_mask)
        # similar lengths together: less padding inside each credit forward
        todo.sort(key=lambda item: len(item[1].input_ids))
        chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
        forwards = agreed_count(len(chunks), analyzer.model)  # before any forward: a collective itself
        for chunk in chunks:
            out = analyzer.analyze([trace for _, trace in chunk])
            results.extend((b, res) for (b, _), res in zip(chunk, out))
        for _ in range(forwards - len(chunks)):
            analyzer.analyze([dummy_trace()])
    return credit_from_results(
        analyzer.config.credit,
        strategy,
        results,
        completion_ids,
        completion_mask,
        loss_mask,
        seed_base=seed_base,
    )


def credit_from_results(
    credit: CreditConfig,
    strategy: str,
    results: list[tuple[int, TraceResult]],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    seed_base: tuple[int, int] = (0, 0),
    seed_row_offset: int = 0,
) -> RolloutCredit:
    """Lay the analysed rows' gamma for ``strategy`` onto the (B, T) completion grid; count roles.

    ``results`` holds (row, result) for the analysed rows; every other row and every position
    outside ``loss_mask`` (default ``completion_mask``) keeps gamma = 1. The random baseline seeds
    row b with ``seed_row_offset + b`` (a micro-batch's offset in its rollout batch, so that the
    micro-batches of one step draw different subsets). With ``credit.gamma_norm == "mean"`` each row's
    gamma has mean 1 over its ``loss_mask`` tokens, the gamma
    :func:`~attnrhythm.method.credit.shape_advantages` then applies (and the counts log).
    """
    bsz, width = completion_ids.shape
    out = torch.ones(bsz, width, dtype=torch.float32)
    loss_mask = completion_mask if loss_mask is None else loss_mask
    lm = loss_mask.detach().to("cpu").bool()
    counts: dict[str, float] = {
        "sequences": float(bsz),
        "analysed": 0.0,
        "tokens": float(lm.sum()),
        **{name: 0.0 for name in ROLE_NAMES},
    }
    for b, res in results:
        if strategy == "random":  # a fresh subset per sequence, not the record's fixed seed
            seed = sequence_seed(credit.seed, seed_base[0], seed_base[1], seed_row_offset + b)
            cfg = replace(credit, seed=seed)
            g = gamma(strategy, waad=res.waad, fai=res.fai, delta=res.delta, entropy=res.entropy, config=cfg)
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
    # masked positions: no credit; gamma_norm "mean": mean 1 over each row's loss tokens (the
    # analysis normalised over the whole response, the loss mask may be narrower, e.g. tool output)
    out = normalize_gamma(out, lm, credit.gamma_norm)
    counts["gamma_sum"] = float(out[lm].sum())
    counts["amplified"] = float((out[lm] > 1).sum())
    spans = [res.distance for _, res in results]
    rows = row_counts(out, lm, results)
    return RolloutCredit(
        gamma=out.to(completion_ids.device),
        counts=counts,
        spans=spans,
        row_counts=rows,
        span_rows=[b for b, _ in results],
    )


def row_counts(
    gamma_grid: torch.Tensor, loss_mask: torch.Tensor, results: list[tuple[int, TraceResult]]
) -> torch.Tensor:
    """(B, len(COUNT_KEYS)) float64: the counts of :class:`RolloutCredit` row by row."""
    lm = loss_mask.bool()
    masked = torch.where(lm, gamma_grid, torch.zeros_like(gamma_grid)).double()
    rows = torch.zeros(gamma_grid.shape[0], len(COUNT_KEYS), dtype=torch.float64)
    column = {key: i for i, key in enumerate(COUNT_KEYS)}
    rows[:, column["sequences"]] = 1.0
    rows[:, column["tokens"]] = lm.sum(-1).double()
    rows[:, column["gamma_sum"]] = masked.sum(-1)
    rows[:, column["amplified"]] = ((gamma_grid > 1) & lm).sum(-1).double()
    for b, res in results:
        rows[b, column["analysed"]] = 1.0
        for name in ROLE_NAMES:
            idx = [t for t in getattr(res.roles, name) if t < lm.shape[1]]
            if idx:
                rows[b, column[name]] = float(lm[b, torch.tensor(idx, dtype=torch.long)].sum())
    return rows


@dataclass
class FusedChunk:
    """What :func:`capturing_rollout` found: (row, result) per analysed row of the chunk.

    ``entropy``: set it inside the block to the forward's (B, C) completion entropies (column j:
    the entropy of the distribution that produced completion token j, untempered) to give the
    results their entropy and the ``entropy`` strategy's gamma.
    """

    results: list[tuple[int, TraceResult]] = field(default_factory=list)
    entropy: torch.Tensor | None = None


@contextmanager
def capturing_rollout(
    analyzer: Analyzer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    *,
    row_offset: int = 0,
    keep_model_output: bool = False,
) -> Iterator[FusedChunk]:
    """Capture the analysis in whatever forward of ``analyzer.model`` runs inside the block.

    ``input_ids``/``attention_mask`` (B, P + C) are TRL's layout: left-padded prompt then
    right-padded completion, the last ``logits_to_keep`` = C columns being the completion. The
    forward inside the block must be over exactly this batch (e.g. TRL's ``old_per_token_logps``
    forward). Response rows (the completion up to its last unmasked token) are weighted; rows that
    :func:`rollout_traces` would leave out are not analysed. After the block, ``.results`` holds
    (``row_offset`` + row, result); the ``entropy`` strategy's gamma is among them only when the
    block sets ``found.entropy`` (the capture does not see the logits). ``keep_model_output``: every
    layer's output stays SDPA's, so the forward computes exactly what it computes without the
    capture (for a loss forward; see ``Capture.own_output``).
    """
    width = input_ids.shape[1]
    p = width - logits_to_keep
    todo = rollout_traces(
        analyzer, input_ids[:, :p], attention_mask[:, :p], input_ids[:, p:], attention_mask[:, p:]
    )
    row_weight = torch.zeros(input_ids.shape, dtype=torch.float32)
    for b, trace in todo:
        row_weight[b, p : p + len(trace.input_ids) - trace.response_start] = 1.0
    capture = analyzer.new_capture(row_weight.to(input_ids.device), live=attention_mask)
    capture.own_output = not keep_model_output
    found = FusedChunk()
    with capturing(capture):
        yield found
    if todo:
        entropy = None
        if found.entropy is not None:
            ent = found.entropy.detach().float().cpu()
            entropy = [ent[b, : len(trace.input_ids) - trace.response_start] for b, trace in todo]
        results = analyzer.results_from_capture(
            capture, [trace for _, trace in todo], [b for b, _ in todo], [p] * len(todo), entropy=entropy
        )
        found.results = [(row_offset + b, res) for (b, _), res in zip(todo, results)]
