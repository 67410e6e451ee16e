"""One streaming forward pass per batch -> per-trace metrics, roles and credit.

The pipeline: left-pad a batch of (prompt + response) token ids, run the decoder once with
the ``attnrhythm`` attention implementation capturing the analysed layers, apply the LM head
in chunks over the response only (entropy and token log-probs), then turn each sequence's
reductions into docs/method.md's metrics, roles and gamma with the pure functions of
:mod:`rhythm` and :mod:`credit`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from attnrhythm import display, spans
from attnrhythm.attention import capture as cap
from attnrhythm.attention.model_config import config_int
from attnrhythm.attention.sharding import full_parameters
from attnrhythm.config import AnalysisConfig
from attnrhythm.errors import AttnRhythmError
from attnrhythm.headsets import read_heads_file
from attnrhythm.method.credit import STRATEGIES, gamma
from attnrhythm.method.rhythm import (
    HeadClasses,
    classify_heads,
    delta,
    entropy_and_log_probs,
    fai,
    find_roles,
    head_distance,
    parse_layers,
    receiver_heads,
    round_half_up,
    waad,
)
from attnrhythm.padding import left_pad
from attnrhythm.schema import SCHEMA_VERSION, record_float, record_floats


def sink_positions(live: torch.Tensor, count: int) -> torch.Tensor:
    """(B, N) bool: the first ``count`` live positions of each row of ``live`` (B, N) (the sink keys)."""
    live = live.bool()
    return live & (live.long().cumsum(-1) <= count)


@dataclass
class TraceInput:
    """One sequence: token ids of prompt + response and the index of the first response token."""

    input_ids: list[int]
    response_start: int
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, max_len: int | None) -> None:
        n_resp = len(self.input_ids) - self.response_start
        if n_resp <= 0:
            raise AttnRhythmError("the response is empty: give a response with at least 2 tokens")
        if n_resp == 1:
            raise AttnRhythmError("the response has 1 token: attnrhythm needs at least 2 response tokens")
        if self.response_start < 1:
            raise AttnRhythmError(
                "the prompt is empty: the first response token needs a preceding token (give a prompt "
                "or use a tokenizer that adds a BOS token)"
            )
        if max_len is not None and len(self.input_ids) > max_len:
            raise AttnRhythmError(
                f"prompt+response has {len(self.input_ids)} tokens, more than the model's context of "
                f"{max_len}: shorten the input or use a model with a longer context"
            )


def clip_span(span: tuple[int, int], n_response: int) -> tuple[int, int]:
    """:func:`attnrhythm.spans.clip_span`, an error when the span starts past the response."""
    clipped = spans.clip_span(span, n_response)
    if clipped is None:
        start, end = span
        raise AttnRhythmError(
            f"span {start}:{end} is outside the response ({n_response} tokens): pick START < {n_response - 1}"
        )
    return clipped


def load_heads_file(path: str | Path) -> tuple[list[int], HeadClasses]:
    """Read a fixed head set (:func:`attnrhythm.headsets.read_heads_file`).

    Returns (absolute layers to analyse, classes with absolute layer indices).
    """
    return read_heads_file(path)


def context_length(model: PreTrainedModel) -> int | None:
    return config_int(model, "max_position_embeddings", "n_positions", "n_ctx")


@dataclass
class TraceResult:
    """Everything attnrhythm knows about one trace (tensors are response-relative)."""

    input_ids: list[int]
    response_start: int
    layers: list[int]
    distance: torch.Tensor  # (L, H) span d[l,h]
    heads: HeadClasses  # (absolute layer, head) pairs
    waad: torch.Tensor
    fai: torch.Tensor
    entropy: torch.Tensor
    logprob: torch.Tensor
    delta: torch.Tensor
    roles: Any
    gamma: dict[str, torch.Tensor]
    config: AnalysisConfig
    meta: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, Any] | None = None  # {"span": [s, e], "local": SxS, "global": SxS} (tensors)
    receivers: list[tuple[int, int]] = field(default_factory=list)  # receiver heads (absolute layer)
    fai_receiver: torch.Tensor | None = None  # FAI over receiver heads
    sink_mass: torch.Tensor | None = None  # (L, H) mean attention mass on the sinks over response rows
    tokenizer: Any = field(default=None, repr=False, compare=False)  # for tokens in to_record / notebooks

    def _repr_html_(self) -> str | None:
        """Jupyter: this trace's self-contained report inline.

        The view is :class:`attnrhythm.views.report.Report`, registered in :mod:`attnrhythm.display`
        when it is imported (``import attnrhythm`` does so inside IPython).
        """
        return display.render("trace", self)

    def to_record(self, tokenizer: Any = None) -> dict[str, Any]:
        """The JSON record documented in docs/records.md (schema_version 1)."""
        lo, hi = self.config.fai_horizon  # type: ignore[misc]
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        tokens = [tokenizer.decode([i]) for i in self.input_ids] if tokenizer is not None else None
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            **self.meta,
            "input_ids": self.input_ids,
            "tokens": tokens,
            "response_start": self.response_start,
            "layers": self.layers,
            "window": self.config.window,
            "fai_horizon": [lo, hi],
            "head_quantile": self.config.head_quantile,
            "heads": {
                "distance": [record_floats(row) for row in self.distance.tolist()],
                "local": [list(h) for h in self.heads.local],
                "global": [list(h) for h in self.heads.global_],
            },
            "metrics": {
                "waad": _floats(self.waad),
                "fai": _floats(self.fai),
                "entropy": _floats(self.entropy),
                "logprob": _floats(self.logprob),
                "delta": _floats(self.delta),
            },
            "roles": {
                "preplan": self.roles.preplan,
                "anchor": self.roles.anchor,
                "dominated": self.roles.dominated,
                "intro": self.roles.intro,
                "intro_of": {str(k): v for k, v in self.roles.intro_of.items()},
                "tau_waad": _float(self.roles.tau_waad),
                "tau_delta": _float(self.roles.tau_delta),
            },
            "credit": asdict(self.config.credit),
            "gamma": {name: _floats(g) for name, g in self.gamma.items()},
        }
        if self.fai_receiver is not None:
            record["heads"]["receiver"] = [list(h) for h in self.receivers]
            record["heads"]["proximity"] = self.config.proximity
            record["metrics"]["fai_receiver"] = _floats(self.fai_receiver)
        record["sinks"] = {"mode": self.config.sinks, "tokens": self.config.sink_tokens}
        if self.sink_mass is not None:
            record["heads"]["sink_mass"] = [record_floats(row) for row in self.sink_mass.tolist()]
        if self.maps is not None:
            record["maps"] = maps_to_json(self.maps)
        return record


def maps_to_json(maps: dict[str, Any]) -> dict[str, Any]:
    """Mean maps as nested lists of record floats (rows = queries, cols = keys)."""
    return {
        "span": list(maps["span"]),
        "local": [record_floats(row) for row in maps["local"].tolist()],
        "global": [record_floats(row) for row in maps["global"].tolist()],
    }


def _float(x: float) -> float | None:
    return record_float(x)


def _floats(t: torch.Tensor) -> list[float | None]:
    return record_floats(t.double().tolist())


class Analyzer:
    """Streaming analysis of a model; reusable across batches.

    >>> analyzer = Analyzer(model, AnalysisConfig())
    >>> results = analyzer.analyze([TraceInput(ids, response_start)])
    """

    def __init__(self, model: PreTrainedModel, config: AnalysisConfig | None = None) -> None:
        if config is not None and config.heads_refresh:
            raise AttnRhythmError(
                f"heads refresh:{config.heads_refresh} is a training setting (attnrhythm train): analyse "
                "with per-sequence heads or a head set file"
            )
        self.model = cap.use_streaming_attention(model)
        self.config = config or AnalysisConfig()
        self.n_layers = cap.num_layers(model)
        if self.config.heads is not None:
            needed = self.config.heads_layers or sorted(
                {h[0] for h in self.config.heads.local + self.config.heads.global_}
            )
            for layer in needed:
                if not 0 <= layer < self.n_layers:
                    raise AttnRhythmError(
                        f"the fixed head set uses layer {layer}, but the model has {self.n_layers} layers"
                    )
            n_heads = _num_heads(model)
            for layer, head in self.config.heads.local + self.config.heads.global_:
                if n_heads is not None and not 0 <= head < n_heads:
                    raise AttnRhythmError(
                        f"the fixed head set uses head {head} of layer {layer}, but the model has "
                        f"{n_heads} query heads per layer"
                    )
            self.layers = sorted(set(needed))
        else:
            self.layers = parse_layers(self.config.layers, self.n_layers)
        self.max_len = context_length(model)

    # -- the forward pass -------------------------------------------------------------
    @torch.no_grad()
    def analyze(self, traces: list[TraceInput]) -> list[TraceResult]:
        """Analyse a batch in one forward pass (all traces must be valid: see TraceInput.check).

        On an FSDP2-sharded model the parameters the analysis needs outside the layers' own
        forwards are gathered for the call and resharded after it (:mod:`attnrhythm.attention.sharding`);
        like any FSDP forward, every rank must then call it the same number of times.
        """
        for trace in traces:
            trace.check(self.max_len)
        with full_parameters(self.model):
            return self._analyze(traces)

    def _analyze(self, traces: list[TraceInput]) -> list[TraceResult]:
        model = self.model
        device = next(model.parameters()).device
        bsz = len(traces)
        ids, mask, position_ids = left_pad([t.input_ids for t in traces], _pad_id(model))
        length = ids.shape[1]
        row_weight = torch.zeros(bsz, length)
        for b, t in enumerate(traces):
            row_weight[b, length - len(t.input_ids) + t.response_start :] = 1.0
        ids, mask, position_ids = ids.to(device), mask.to(device), position_ids.to(device)

        spans: list[tuple[int, int] | None] | None = None
        if self.config.save_maps is not None:
            spans = []
            for t in traces:
                s0, s1 = clip_span(self.config.save_maps, len(t.input_ids) - t.response_start)
                offset = length - len(t.input_ids) + t.response_start
                spans.append((offset + s0, offset + s1))
        capture = self.new_capture(row_weight.to(device), blocks=spans, live=mask)
        was_training = model.training
        model.eval()
        try:
            with cap.capturing(capture):
                hidden = model.base_model(
                    input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False
                ).last_hidden_state
        finally:
            model.train(was_training)
        self._check_captured(capture)
        results = []
        for b, trace in enumerate(traces):
            pad = length - len(trace.input_ids)
            r0 = pad + trace.response_start
            ent, logp = self._response_logits(hidden[b], ids[b], r0)
            results.append(self._finish(trace, capture, b, r0, ent, logp))
        return results

    # -- the post-forward part, reusable with a capture taken in someone else's forward --
    def capture_bands(self) -> list[tuple[int, int | None]]:
        """The column-reduction horizons the metrics need: FAI's band, plus the receivers' one."""
        bands = [self.config.fai_horizon]
        if self.config.receiver_count != 0 and (self.config.proximity, None) not in bands:
            bands.append((self.config.proximity, None))
        return bands  # type: ignore[return-value]

    def new_capture(
        self,
        row_weight: torch.Tensor,
        blocks: list[tuple[int, int] | None] | None = None,
        live: torch.Tensor | None = None,
    ) -> cap.Capture:
        """A :class:`~attnrhythm.attention.capture.Capture` of this analysis for a (B, N) padded batch.

        ``row_weight`` is 1 on the response rows of each sequence (the rows whose attention the
        column reductions sum), 0 elsewhere. Activate it with :func:`~attnrhythm.attention.capture.capturing`
        around any forward of this model over that batch, then call :meth:`results_from_capture`.
        ``live`` (B, N), the attention mask of the batch, locates the sinks (the first
        ``sink_tokens`` live tokens of each row): without it no sink mass is measured, and
        ``sinks="exclude"`` is an error.
        """
        sinks = None if live is None else sink_positions(live.to(row_weight.device), self.config.sink_tokens)
        if sinks is None and self.config.sinks == "exclude":
            raise AttnRhythmError("sinks='exclude' needs the batch's attention mask: pass live=mask")
        return cap.Capture(
            layers=self.layers,
            window=self.config.window,
            bands=self.capture_bands(),
            row_weight=row_weight,
            tile_size=self.config.tile_size,
            blocks=blocks,
            route=self.config.route or cap.default_route(),
            sinks=sinks,
            exclude_sinks=self.config.sinks == "exclude",
        )

    def results_from_capture(
        self,
        capture: cap.Capture,
        traces: list[TraceInput],
        rows: list[int],
        starts: list[int],
        entropy: list[torch.Tensor] | None = None,
        logprob: list[torch.Tensor] | None = None,
    ) -> list[TraceResult]:
        """Metrics, roles and gamma of ``traces`` from a capture taken in an external forward.

        ``traces[i]`` is row ``rows[i]`` of the captured batch, its first response token at padded
        position ``starts[i]`` (tokens after its response, e.g. right padding, are ignored).
        ``entropy``/``logprob`` are per-trace response vectors when known; without ``entropy`` the
        metrics hold NaN and the ``entropy`` strategy's gamma is left out (it needs the logits).
        """
        self._check_captured(capture)
        results = []
        for i, (trace, b, r0) in enumerate(zip(traces, rows, starts)):
            n = len(trace.input_ids) - trace.response_start
            nan = torch.full((n,), float("nan"))
            ent = entropy[i] if entropy is not None else nan
            logp = logprob[i] if logprob is not None else nan
            results.append(self._finish(trace, capture, b, r0, ent, logp, with_entropy=entropy is not None))
        return results

    def _check_captured(self, capture: cap.Capture) -> None:
        missing = [layer for layer in self.layers if layer not in capture.results]
        if missing:
            raise AttnRhythmError(
                f"layers {missing} were not captured: {type(self.model).__name__} does not route them "
                "through transformers' attention interface"
            )

    def _response_logits(
        self, hidden: torch.Tensor, ids: torch.Tensor, r0: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropy and log-prob of each response token, the LM head applied in chunks."""
        head = self.model.get_output_embeddings()
        config = self.model.config
        softcap = getattr(config, "final_logit_softcapping", None)
        n = hidden.shape[0]
        chunk = self.config.logits_chunk
        # a plain bias-free fp32 head writes into one reused buffer: nothing vocab-sized is
        # allocated per chunk (measured at 4K, 3072 rows: 1.9 s -> 1.4 s, lower peak RSS)
        plain = (
            isinstance(head, torch.nn.Linear)
            and head.bias is None
            and type(head.weight.data) is torch.Tensor  # not a sharded (DTensor) weight
            and head.weight.dtype == hidden.dtype == torch.float32
        )
        rows = min(chunk, max(1, n - r0))
        buffer = hidden.new_empty(rows, head.weight.shape[0]) if plain else None
        scratch = None
        ent, logp = [], []
        for start in range(r0 - 1, n - 1, chunk):
            stop = min(n - 1, start + chunk)
            if buffer is not None:
                logits = torch.mm(hidden[start:stop], head.weight.t(), out=buffer[: stop - start])
            else:
                logits = head(hidden[start:stop]).float()
            if softcap:
                logits.div_(softcap).tanh_().mul_(softcap)
            if scratch is None:
                scratch = torch.empty(rows, logits.shape[-1], dtype=logits.dtype, device=logits.device)
            entropy, log_probs = entropy_and_log_probs(
                logits, ids[start + 1 : stop + 1], scratch=scratch[: stop - start]
            )
            ent.append(entropy)
            logp.append(log_probs)
        return torch.cat(ent).cpu(), torch.cat(logp).cpu()

    def _finish(
        self,
        trace: TraceInput,
        capture: cap.Capture,
        b: int,
        r0: int,
        ent: torch.Tensor,
        logp: torch.Tensor,
        *,
        with_entropy: bool = True,
    ) -> TraceResult:
        cfg = self.config
        horizon = cfg.fai_horizon
        r1 = r0 + len(trace.input_ids) - trace.response_start  # the response rows [r0, r1) of row b
        span = torch.stack([capture.results[layer].span[b] for layer in self.layers]).cpu()
        waad_rows = torch.stack([capture.results[layer].waad[b, :, r0:r1] for layer in self.layers]).cpu()
        col_rows = torch.stack(
            [capture.results[layer].cols[horizon][b, :, r0:r1] for layer in self.layers]
        ).cpu()
        distance = head_distance(span, r1 - r0)
        sink_mass = None
        if capture.results[self.layers[0]].sink is not None:
            sink_mass = torch.stack(
                [capture.results[layer].sink[b, :, r0:r1].double().mean(-1) for layer in self.layers]
            ).cpu()
        receivers: list[tuple[int, int]] = []
        fai_receiver = None
        if cfg.receiver_count != 0:
            prox_rows = torch.stack(
                [capture.results[layer].cols[(cfg.proximity, None)][b, :, r0:r1] for layer in self.layers]
            ).cpu()
            count = cfg.receiver_count or max(1, round_half_up(cfg.head_quantile * distance.numel()))
            receivers, _ = receiver_heads(prox_rows, cfg.proximity, min(count, distance.numel()))
            fai_receiver = fai(col_rows, receivers, horizon)  # type: ignore[arg-type]
        if cfg.heads is None:
            classes = classify_heads(distance, cfg.head_quantile)
        else:
            pos = {layer: i for i, layer in enumerate(self.layers)}
            classes = HeadClasses(
                local=[(pos[a], h) for a, h in cfg.heads.local],
                global_=[(pos[a], h) for a, h in cfg.heads.global_],
            )
        w = waad(waad_rows, classes.local)
        f = fai(col_rows, classes.global_, horizon)  # type: ignore[arg-type]
        dl = delta(w)
        credit = cfg.credit
        roles = find_roles(
            w,
            f,
            dl,
            q=credit.q,
            k=credit.k,
            tau_waad=credit.tau_waad,
            tau_delta=credit.tau_delta,
            bottom=credit.selection == "bottom",
        )
        gammas = {
            name: gamma(name, waad=w, fai=f, delta=dl, entropy=ent, config=credit, roles=roles)
            for name in STRATEGIES
            if with_entropy or name != "entropy"
        }
        maps = None
        first = capture.results[self.layers[0]]
        if first.blocks is not None and first.blocks[b] is not None:
            blocks = torch.stack([capture.results[layer].blocks[b] for layer in self.layers]).cpu()
            s0, s1 = clip_span(cfg.save_maps, len(trace.input_ids) - trace.response_start)
            maps = {
                "span": [s0, s1],
                "local": torch.stack([blocks[li, h] for li, h in classes.local]).mean(0),
                "global": torch.stack([blocks[li, h] for li, h in classes.global_]).mean(0),
            }
        absolute = HeadClasses(
            local=[(self.layers[li], h) for li, h in classes.local],
            global_=[(self.layers[li], h) for li, h in classes.global_],
        )
        return TraceResult(
            input_ids=list(trace.input_ids),
            response_start=trace.response_start,
            layers=list(self.layers),
            distance=distance,
            heads=absolute,
            waad=w,
            fai=f,
            entropy=ent.double(),
            logprob=logp.double(),
            delta=dl,
            roles=roles,
            gamma=gammas,
            config=cfg,
            meta=dict(trace.meta),
            maps=maps,
            receivers=[(self.layers[li], h) for li, h in receivers],
            fai_receiver=fai_receiver,
            sink_mass=sink_mass,
        )


def compute_maps(
    model: PreTrainedModel, tokenizer: Any, record: dict[str, Any], span: str | tuple[int, int]
) -> dict[str, Any]:
    """Recompute a record's mean local/global maps for a response window, with the record's heads.

    One forward pass over the record's tokens; only the (span x span) blocks are kept.
    """
    heads = record["heads"]
    classes = HeadClasses(
        local=[(int(a), int(b)) for a, b in heads["local"]],
        global_=[(int(a), int(b)) for a, b in heads["global"]],
    )
    config = AnalysisConfig(
        window=record["window"],
        fai_horizon=tuple(record["fai_horizon"]),
        head_quantile=record["head_quantile"],
        heads=classes,
        heads_layers=list(record["layers"]),
        save_maps=span,
    )
    result = Analyzer(model, config).analyze(
        [TraceInput(list(record["input_ids"]), record["response_start"])]
    )
    return maps_to_json(result[0].maps)


def _num_heads(model: PreTrainedModel) -> int | None:
    return config_int(model, "num_attention_heads", "n_head")


def _pad_id(model: PreTrainedModel) -> int:
    """A token id for padding positions (masked out, so any id inside the vocabulary works)."""
    config = model.config
    vocab = model.get_input_embeddings().num_embeddings
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < vocab:
            return value
    return 0
