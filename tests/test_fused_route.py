"""The fused route (kernel output + log-sum-exp, band scan, reverse pass) equals the dense and tile routes.

* ``Capture.attend`` on random query/key/value with transformers-style masks (none, left padding,
  right padding, padding at both ends, sliding windows; bool and additive; GQA; several open
  and finite bands; row weights) against a float64 softmax and against the tile route, and its
  output against SDPA's;
* the automatic fallback to the tile route and the ``route`` knob;
* a tiny model's logits with a capture, on a batch padded at both ends (prompt left-padded,
  completion right-padded), as a trainer's forward would be.

Tolerance: ``rtol = atol = 1e-5`` (fp32 against float64), as in ``test_streaming_vs_dense.py``.
"""

from __future__ import annotations

import pytest
import test_streaming_vs_dense as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrhythm.attention import capture as cap
from attnrhythm.attention import fused
from attnrhythm.attention.reference import dense_reductions, dense_sink_mass
from attnrhythm.errors import AttnRhythmError

TOL = {"rtol": 1e-5, "atol": 1e-5}


class FakeAttention(torch.nn.Module):
    """The attributes transformers' SDPA path reads from an attention module."""

    def __init__(self, layer_idx: int, groups: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_key_value_groups = groups
        self.is_causal = True


def layout_mask(bsz, n, segments, window, *, as_float=False, per_head=1):
    """transformers' 4D mask: key padding & causal (& sliding window); padded query rows as it makes them."""
    pos = torch.arange(n)
    live = torch.zeros(bsz, n, dtype=torch.bool)
    for b, (s, e) in enumerate(segments):
        live[b, s:e] = True
    gap = pos[:, None] - pos[None, :]
    allowed = live[:, None, None, :] & (gap >= 0)
    if window is not None:
        allowed = allowed & (gap < window)
    allowed = allowed.expand(bsz, per_head, n, n).clone()
    if as_float:
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


@st.composite
def fused_case(draw):
    bsz = draw(st.integers(1, 3))
    n = draw(st.integers(2, 40))
    segments = []
    for _ in range(bsz):
        s = draw(st.integers(0, n - 1))
        e = draw(st.integers(s + 1, n))
        segments.append((s, e))
    kind = draw(st.sampled_from(["none", "padded", "padded", "sliding"]))
    if kind == "none":
        segments = [(0, n)] * bsz
    opens = draw(st.lists(st.integers(0, 12), max_size=3, unique=True))
    finite = draw(
        st.lists(st.sampled_from([(0, 0), (1, 4), (10, 50), (2, 20), (5, 5)]), max_size=2, unique=True)
    )
    return dict(
        bsz=bsz,
        n=n,
        segments=segments,
        window=draw(st.integers(1, 12)) if kind == "sliding" else None,
        as_float=draw(st.booleans()),
        n_kv=draw(st.sampled_from([1, 2])),
        group=draw(st.sampled_from([1, 3])),
        dim=draw(st.sampled_from([4, 8])),
        seed=draw(st.integers(0, 2**16)),
        amplitude=draw(st.sampled_from([0.5, 1.0, 2.5])),
        scaling=draw(st.sampled_from([None, 0.3])),
        waad_window=draw(st.sampled_from([1, 3, 10, 100])),
        bands=[(lo, None) for lo in opens] + finite or [(0, None)],
        blocks=draw(st.booleans()),
        prompt=draw(st.integers(0, 8)),  # unweighted rows at the start of each sequence
        sink_count=draw(st.sampled_from([None, 0, 1, 1, 2, 5])),  # first tokens of each sequence
        exclude_sinks=draw(st.booleans()),
    )


def case_sinks(case):
    """(B, N) bool sink keys of a drawn case (the first tokens of each live run), or None."""
    if case.get("sink_count") is None:
        return None
    return ref.first_live(live_rows(case["segments"], case["n"])[:, 0], case["sink_count"])


def run_case(case, route):
    gen = torch.Generator().manual_seed(case["seed"])
    bsz, n, dim = case["bsz"], case["n"], case["dim"]
    n_heads = case["n_kv"] * case["group"]
    q = torch.randn(bsz, n_heads, n, dim, generator=gen) * case["amplitude"]
    k = torch.randn(bsz, case["n_kv"], n, dim, generator=gen) * case["amplitude"]
    v = torch.randn(bsz, case["n_kv"], n, dim, generator=gen)
    padded = case["segments"] != [(0, n)] * bsz or case["window"] is not None
    mask = (
        layout_mask(bsz, n, case["segments"], case["window"], as_float=case["as_float"]) if padded else None
    )
    weight = torch.rand(bsz, n, generator=gen)
    for b, (s, e) in enumerate(case["segments"]):
        weight[b, : s + case["prompt"]] = 0
        weight[b, e:] = 0
    blocks = None
    if case["blocks"]:
        blocks = [(s, min(e, s + 6)) for s, e in case["segments"]]
    capture = cap.Capture(
        layers=[0],
        window=case["waad_window"],
        bands=case["bands"],
        row_weight=weight,
        blocks=blocks,
        route=route,
        tile_size=5,
        sinks=case_sinks(case),
        exclude_sinks=case.get("sink_count") is not None and case["exclude_sinks"],
    )
    module = FakeAttention(0, case["group"])
    with cap.capturing(capture), torch.no_grad():
        out, _ = cap.attnrhythm_attention_forward(module, q, k, v, mask, scaling=case["scaling"])
    return q, k, v, mask, weight, capture, out


def dense_case(case, q, k, mask, weight):
    """The float64 reference of a drawn case: (dist, waad, cols)."""
    return dense_reductions(
        q.float(),
        k.float(),
        mask,
        scaling=case["scaling"],
        window=case["waad_window"],
        bands=case["bands"],
        row_weight=weight,
        softcap=None,
        sinks=case_sinks(case),
        exclude_sinks=case.get("sink_count") is not None and case["exclude_sinks"],
    )


def live_rows(segments, n):
    rows = torch.zeros(len(segments), n, dtype=torch.bool)
    for b, (s, e) in enumerate(segments):
        rows[b, s:e] = True
    return rows[:, None, :]


@settings(max_examples=60, deadline=None)
@given(case=fused_case())
def test_fused_route_matches_float64_softmax_and_the_tile_route(case):
    q, k, v, mask, weight, capture, out = run_case(case, "auto")
    assert capture.routes[0] in ("fused", "band")
    if case["window"] is not None and any(e - s > case["window"] for s, e in case["segments"]):
        assert capture.routes[0] == "band"
    got = capture.results[0]
    dist, waad, cols = dense_case(case, q, k, mask, weight)
    live = live_rows(case["segments"], case["n"])
    torch.testing.assert_close(got.dist.double() * live, dist * live, **TOL)
    torch.testing.assert_close(got.waad.double() * live, waad * live, **TOL)
    for band in case["bands"]:
        torch.testing.assert_close(got.cols[band].double(), cols[band], **TOL)
    assert torch.all(got.dist * ~live == 0)  # padding rows: zero on the fused route
    sinks = case_sinks(case)
    if sinks is None:
        assert got.sink is None
    else:
        mass = dense_sink_mass(q, k, mask, sinks, scaling=case["scaling"], softcap=None)
        torch.testing.assert_close(got.sink.double() * live, mass * live, **TOL)
    # the layer output is SDPA's on every row, padding rows included
    group = case["group"]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q,
        k.repeat_interleave(group, 1),
        v.repeat_interleave(group, 1),
        attn_mask=mask,
        is_causal=mask is None,
        scale=case["scaling"],
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected, **TOL)
    # and the tile route agrees on the live rows
    *_, tiled, _ = run_case(case, "tile")
    assert tiled.routes[0] == "tile"
    other = tiled.results[0]
    torch.testing.assert_close(got.dist * live, other.dist * live, **TOL)
    torch.testing.assert_close(got.waad * live, other.waad * live, **TOL)
    for band in case["bands"]:
        torch.testing.assert_close(got.cols[band], other.cols[band], **TOL)
    if sinks is not None:
        torch.testing.assert_close(got.sink * live, other.sink * live, **TOL)
    if case["blocks"]:
        for mine, theirs in zip(got.blocks, other.blocks, strict=True):
            torch.testing.assert_close(mine, theirs, **TOL)


def test_reverse_pass_matches_column_sums_by_hand():
    """C_lo[s] = sum_{t >= s+lo} w_t A[t,s] from one reverse kernel call, against float64."""
    gen = torch.Generator().manual_seed(7)
    n, dim = 37, 8
    q = torch.randn(6, n, dim, generator=gen) * 2
    k = torch.randn(2, n, dim, generator=gen) * 2
    w = (torch.rand(n, generator=gen) > 0.3).float() * torch.rand(n, generator=gen)
    scores = (q.double() @ k.double().repeat_interleave(3, 0).transpose(1, 2)) * 0.4
    t = torch.arange(n)
    gap = t[:, None] - t[None, :]
    probs = torch.softmax(scores.masked_fill(gap < 0, float("-inf")), -1)
    lse = torch.logsumexp(scores.masked_fill(gap < 0, float("-inf")), -1).float()
    for lo in (0, 1, 4, 36, 37, 50):
        got = fused.column_sums_to_end(q, k, lse, w, 0.4, lo)
        want = (probs * (gap >= lo) * w.double()[:, None]).sum(-2)
        torch.testing.assert_close(got.double(), want, **TOL)


def test_detect_layout_reads_padding_and_windows():
    mask = layout_mask(3, 12, [(2, 12), (0, 7), (3, 9)], None)
    layout = fused.detect_layout(mask, 3, 12)
    assert layout.segments == [(2, 12), (0, 7), (3, 9)] and layout.window is None
    mask = layout_mask(2, 12, [(0, 12), (4, 12)], 5, as_float=True)
    layout = fused.detect_layout(mask, 2, 12)
    assert layout.segments == [(0, 12), (4, 12)] and layout.window == 5
    assert fused.detect_layout(None, 2, 5).segments == [(0, 5), (0, 5)]
    # packed sequences (block-diagonal), a per-head mask, a bias: not expressible
    packed = layout_mask(1, 10, [(0, 10)], None)
    packed[..., 5:, :5] = False
    assert fused.detect_layout(packed, 1, 10) is None
    assert fused.detect_layout(layout_mask(1, 10, [(0, 10)], None, per_head=2), 1, 10) is None
    biased = layout_mask(1, 10, [(0, 10)], None, as_float=True)
    biased[0, 0, 5, 2] = -1.0
    assert fused.detect_layout(biased, 1, 10) is None


def _fallback_inputs(n=12):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, n, 8, generator=gen)
    k = torch.randn(2, 2, n, 8, generator=gen)
    return q, k, k.clone()


@pytest.mark.parametrize("why", ["softcap", "per_head", "padding_weight", "negative_weight", "packed"])
def test_tile_route_is_chosen_automatically(why):
    n = 12
    q, k, v = _fallback_inputs(n)
    mask = layout_mask(2, n, [(0, n), (3, n)], None)
    weight = torch.ones(2, n)
    weight[1, :3] = 0
    kwargs = {}
    if why == "softcap":
        kwargs["softcap"] = 5.0
    elif why == "per_head":
        mask = layout_mask(2, n, [(0, n), (3, n)], None, per_head=4)
    elif why == "padding_weight":
        weight[1, 0] = 1.0
    elif why == "negative_weight":
        weight[0, 4] = -0.5
    elif why == "packed":
        mask[0, :, 6:, :6] = False
    capture = cap.Capture(layers=[0], window=3, bands=[(0, None), (1, 4)], row_weight=weight)
    module = FakeAttention(0, 2)
    with cap.capturing(capture), torch.no_grad():
        if why == "softcap":  # SDPA itself refuses soft-capping; the statistics are taken first
            with pytest.raises(ValueError, match="softcap"):
                cap.attnrhythm_attention_forward(module, q, k, v, mask, **kwargs)
        else:
            cap.attnrhythm_attention_forward(module, q, k, v, mask, **kwargs)
    assert capture.routes == {0: "tile"}
    forced = cap.Capture(layers=[0], window=3, bands=[(0, None)], row_weight=weight, route="fused")
    with cap.capturing(forced), pytest.raises(AttnRhythmError, match="fused route"):
        cap.attnrhythm_attention_forward(module, q, k, v, mask, **kwargs)


def test_route_knob(monkeypatch):
    q, k, v = _fallback_inputs()
    module = FakeAttention(0, 2)
    for route, taken in (("tile", "tile"), ("fused", "fused"), ("auto", "fused")):
        capture = cap.Capture(
            layers=[0], window=3, bands=[(0, None)], row_weight=torch.ones(2, 12), route=route
        )
        with cap.capturing(capture), torch.no_grad():
            cap.attnrhythm_attention_forward(module, q, k, v, None)
        assert capture.routes == {0: taken}
    monkeypatch.setenv("ATTNRHYTHM_ROUTE", "tile")
    assert cap.Capture(layers=[0], window=3, bands=[], row_weight=torch.ones(1, 1)).route == "tile"
    with pytest.raises(AttnRhythmError, match="route"):
        cap.Capture(layers=[0], window=3, bands=[], row_weight=torch.ones(1, 1), route="flash")


def test_forward_with_gradients_keeps_sdpa_output():
    """When autograd needs the output, it comes from SDPA; the statistics from the fused calls."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _fallback_inputs()
    q.requires_grad_(True)
    module = FakeAttention(0, 2)
    capture = cap.Capture(layers=[0], window=3, bands=[(0, None)], row_weight=torch.ones(2, 12))
    with cap.capturing(capture):
        out, _ = cap.attnrhythm_attention_forward(module, q, k, v, None)
    expected, _ = sdpa_attention_forward(module, q, k, v, None)
    assert torch.equal(out, expected) and out.requires_grad
    assert capture.routes == {0: "fused"}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_logits_with_padding_at_both_ends(arch):
    """Left-padded prompts and right-padded completions (a trainer's batch): logits unchanged within
    fp32 rounding, and the fused/band statistics equal the tile route's on the live rows."""
    model = ref.tiny_model(arch)
    n_layers = model.config.num_hidden_layers
    n = 40
    spans = [(0, 40), (6, 40), (3, 31), (10, 22)]  # live tokens of each row
    ids = torch.full((len(spans), n), 1, dtype=torch.long)
    attention_mask = torch.zeros(len(spans), n, dtype=torch.long)
    for b, (s, e) in enumerate(spans):
        ids[b, s:e] = torch.tensor(ref._random_ids(e - s, 40 + b))
        attention_mask[b, s:e] = 1
    weight = attention_mask.float()

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits

    model.set_attn_implementation("sdpa")
    reference = run()
    cap.use_streaming_attention(model)
    captures = {}
    try:
        for route in ("auto", "tile"):
            capture = cap.Capture(
                layers=list(range(n_layers)),
                window=4,
                bands=[(2, 9), (4, None)],
                row_weight=weight,
                route=route,
            )
            with cap.capturing(capture):
                logits = run()
            torch.testing.assert_close(logits, reference, **TOL)
            captures[route] = capture
    finally:
        model.set_attn_implementation("sdpa")
    assert set(captures["auto"].routes.values()) <= {"fused", "band"}
    assert set(captures["tile"].routes.values()) == {"tile"}
    live = live_rows(spans, n)
    for layer in range(n_layers):
        a, b = captures["auto"].results[layer], captures["tile"].results[layer]
        torch.testing.assert_close(a.dist * live, b.dist * live, **TOL)
        torch.testing.assert_close(a.waad * live, b.waad * live, **TOL)
        for band in a.cols:
            torch.testing.assert_close(a.cols[band], b.cols[band], **TOL)


# ---------------------------------------------------------------------------------------------
# the distance from column sums, and kernels in bf16/fp16


def _dense_span(dist, weight):
    return (dist * weight.double()[:, None, :]).sum(-1)


@settings(max_examples=40, deadline=None)
@given(case=fused_case())
def test_distance_from_columns_matches_float64(case):
    """``distance="columns"`` (the bf16/fp16 route's formula sum_t w_t t - sum_s s C_0[s]), run in
    float32, gives the span, WAAD and every band of a float64 softmax within 1e-5."""
    q, k, v, mask, weight, capture, _ = run_case(case, "auto")
    layout = fused.detect_layout(mask, case["bsz"], case["n"])
    got, out = fused.layer_reductions(
        q,
        k,
        v,
        layout,
        scaling=case["scaling"],
        window=case["waad_window"],
        bands=case["bands"],
        row_weight=weight,
        distance="columns",
        sinks=None if case_sinks(case) is None else fused.sink_prefixes(case_sinks(case), layout),
        exclude_sinks=capture.exclude_sinks,
    )
    dist, waad, cols = dense_case(case, q, k, mask, weight)
    live = live_rows(case["segments"], case["n"])
    torch.testing.assert_close(got.span, _dense_span(dist * live, weight), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.waad.double() * live, waad * live, **TOL)
    for band in case["bands"]:
        torch.testing.assert_close(got.cols[band].double(), cols[band], **TOL)
    window = case["window"]
    banded = window is not None and all(e - s > window for s, e in case["segments"])
    assert (got.dist is None) == (not banded)  # per-row distances only where the band holds every key
    # the route's own span (per-row distances) agrees
    torch.testing.assert_close(capture.results[0].span, got.span, rtol=1e-5, atol=1e-4)


def test_fold_key_bias_recovers_the_bias():
    """CUDA's reverse pass folds the per-key bias into the head dimension: in bf16/fp16 three parts
    whose float32 sum is the bias; in float32 the folded call equals the CPU mask call."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 20, 8, generator=gen)
    k = torch.randn(3, 20, 8, generator=gen)
    bias = torch.randn(3, 20, generator=gen) * 30 - 12
    bias[:, 5] = fused.NO_WEIGHT
    for dtype in (torch.bfloat16, torch.float16):
        q_aug, k_aug = fused.fold_key_bias(q.to(dtype), k.to(dtype), bias, 0.35)
        assert q_aug.shape == (3, 20, 11) and k_aug.dtype == dtype and torch.all(q_aug[..., 8:] == 1)
        parts = k_aug[..., 8:].float()
        live = torch.ones(20, dtype=torch.bool)
        live[5] = False
        recovered = parts.sum(-1) * 0.35
        torch.testing.assert_close(recovered[:, live], bias[:, live], rtol=2e-7, atol=2e-6)
        assert torch.all(recovered[:, 5] < -1e3)  # a zero-weight row stays at exp() = 0
    q_aug, k_aug = fused.fold_key_bias(q, k, bias, 0.35)
    folded = fused.causal_attention_with_lse(q_aug[None], k_aug[None], torch.zeros_like(k_aug)[None], 0.35)[
        1
    ][0]
    torch.testing.assert_close(folded, fused.causal_lse_with_key_bias(q, k, bias, 0.35), **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_kernels(dtype):
    """A bf16/fp16 layer: the fused calls run in that dtype; the output is SDPA's, the statistics
    match a float64 softmax of the same (rounded) q and k within the CPU kernel's precision."""
    case = {"bsz": 3, "n": 48, "segments": [(0, 48), (5, 48), (2, 40)], "window": None, "as_float": False}
    case |= {"n_kv": 2, "group": 3, "dim": 8, "seed": 11, "amplitude": 1.0, "scaling": None}
    case |= {"waad_window": 10, "bands": [(4, None), (10, 50), (0, None)], "blocks": True, "prompt": 6}
    q, k, v, mask, weight, _, _ = run_case(case, "auto")
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    blocks = [(s, min(e, s + 6)) for s, e in case["segments"]]
    capture = cap.Capture(layers=[0], window=10, bands=case["bands"], row_weight=weight, blocks=blocks)
    module = FakeAttention(0, 3)
    with cap.capturing(capture), torch.no_grad():
        out, _ = cap.attnrhythm_attention_forward(module, q, k, v, mask)
    assert capture.routes == {0: "fused"} and out.dtype == dtype
    layout = fused.detect_layout(mask, 3, 48)
    for bad in ("rows", "tiles"):  # a bf16 output column cannot carry a position
        with pytest.raises(ValueError, match="'columns' or 'auto'"):
            fused.layer_reductions(
                q, k, v, layout, scaling=None, window=10, bands=[], row_weight=weight, distance=bad
            )
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask
    ).transpose(1, 2)
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
    got = capture.results[0]
    assert got.dist is None
    dist, waad, cols = dense_case(case, q, k, mask, weight)
    live = live_rows(case["segments"], case["n"])
    # the CPU kernels in bf16/fp16 give each row's log-sum-exp to ~1e-4: tolerances follow
    low = {"rtol": 1e-3, "atol": 1e-3}
    torch.testing.assert_close(got.waad.double() * live, waad * live, **low)
    for band in case["bands"]:
        torch.testing.assert_close(got.cols[band].double(), cols[band], **low)
    rows = weight.sum(-1).double()[:, None]
    torch.testing.assert_close(got.span / rows, _dense_span(dist * live, weight) / rows, rtol=1e-3, atol=2e-2)
    tiled = cap.Capture(
        layers=[0], window=10, bands=case["bands"], row_weight=weight, route="tile", blocks=blocks
    )
    with cap.capturing(tiled), torch.no_grad():
        cap.attnrhythm_attention_forward(module, q, k, v, mask)
    for mine, theirs in zip(got.blocks, tiled.results[0].blocks, strict=True):
        torch.testing.assert_close(mine, theirs, **low)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bf16_model_analysis_fused_equals_tile(arch, monkeypatch):
    """A bf16 model analysed end to end: the fused route (bf16 kernels, span from column sums)
    gives the tile route's spans, WAAD, FAI and receiver FAI (both score the same bf16 q and k)."""
    import copy

    from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput

    seen = []
    plain = fused.layer_reductions

    def spy(query, *args, **kwargs):
        reductions, output = plain(query, *args, **kwargs)
        seen.append((query.dtype, reductions.dist is None, output is not None))
        return reductions, output

    monkeypatch.setattr(fused, "layer_reductions", spy)
    model = copy.deepcopy(ref.tiny_model(arch)).to(torch.bfloat16)
    trace = TraceInput(ref._random_ids(70, 5), 12)
    results = {}
    for route in ("auto", "tile"):
        analyzer = Analyzer(model, AnalysisConfig(layers="all", route=route, receiver_count=2))
        results[route] = analyzer.analyze([trace])[0]
    fast, tile = results["auto"], results["tile"]
    layers = model.config.num_hidden_layers
    assert seen == [(torch.bfloat16, True, True)] * layers  # bf16 kernels, own output, span by columns
    low = {"rtol": 2e-3, "atol": 2e-3}
    torch.testing.assert_close(fast.distance, tile.distance, **low)
    torch.testing.assert_close(fast.waad, tile.waad, **low)
    torch.testing.assert_close(fast.fai, tile.fai, equal_nan=True, **low)
    assert fast.receivers == tile.receivers
    torch.testing.assert_close(fast.fai_receiver, tile.fai_receiver, equal_nan=True, **low)
