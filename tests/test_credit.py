"""credit.py against gamma computed by hand (docs/method.md section 5), and the GRPO shaping rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rhythm import DELTA, FAI, WAAD

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.credit import (
    STRATEGIES,
    CreditConfig,
    gamma,
    indicator,
    normalize_gamma,
    random_selection,
    shape_advantages,
)

# The 12-token example of test_rhythm.py. Its roles, worked out there by hand:
#   preplan T_loc = [0, 2, 3, 8, 9]      anchors T_glob = [0, 3, 7, 9, 10]
#   dominated D = [3, 10]                intro I(D) = [2, 9]
ENTROPY = torch.tensor([0.1, 2.0, 0.5, 1.5, 0.0, 3.0, 0.2, 0.7, 1.1, 0.3, 2.5, 0.9], dtype=torch.float64)
N = 12


def g(strategy: str, config: CreditConfig = CreditConfig()) -> list[float]:
    return gamma(strategy, waad=WAAD, fai=FAI, delta=DELTA, entropy=ENTROPY, config=config).tolist()


def expect(values: dict[int, float], n: int = N) -> list[float]:
    out = [1.0] * n
    for i, v in values.items():
        out[i] = v
    return out


def test_gamma_is_float64_and_one_per_token():
    for strategy in STRATEGIES:
        out = gamma(strategy, waad=WAAD, fai=FAI, delta=DELTA, entropy=ENTROPY)
        assert out.dtype == torch.float64 and out.shape == (N,)


def test_none():
    assert g("none") == [1.0] * N


def test_local_boosts_preplan_tokens():
    assert g("local") == expect({0: 1.5, 2: 1.5, 3: 1.5, 8: 1.5, 9: 1.5})


def test_global_boosts_anchor_tokens():
    assert g("global") == expect({0: 1.5, 3: 1.5, 7: 1.5, 9: 1.5, 10: 1.5})


def test_coupled_by_hand():
    # free anchors T_glob \ D = 0, 7, 9: +0.5; dominated 3, 10: +(1 - 0.5) * 0.5 = +0.25;
    # intro 2, 9: +0.5 * 0.5 = +0.25. Token 9 is a free anchor and an intro: 1 + 0.5 + 0.25.
    assert g("coupled") == expect({0: 1.5, 2: 1.25, 3: 1.25, 7: 1.5, 9: 1.75, 10: 1.25})


def test_coupled_when_a_dominated_anchor_is_also_an_intro():
    # k = 5 (see test_rhythm): D = 3, 7, 10 with intros 2, 3, 9 -- token 3 is in D and in I(D):
    # 1 + 0.25 + 0.25 = 1.5; token 9 is a free anchor and an intro: 1.75
    config = CreditConfig(k=5)
    assert g("coupled", config) == expect({0: 1.5, 2: 1.25, 3: 1.5, 7: 1.25, 9: 1.75, 10: 1.25})


def test_coupled_with_other_amp_and_alpha():
    # amp 2 (boost 1), alpha 0.2: free anchors +1, D +0.8, intro +0.2
    config = CreditConfig(amp=2.0, alpha=0.2)
    got = g("coupled", config)
    want = expect({0: 2.0, 2: 1.2, 3: 1.8, 7: 2.0, 9: 2.2, 10: 1.8})
    assert got == pytest.approx(want, abs=1e-12)
    # alpha = 0: all credit stays on D; alpha = 1: all of it moves to the intros
    assert g("coupled", CreditConfig(alpha=0.0)) == expect({0: 1.5, 3: 1.5, 7: 1.5, 9: 1.5, 10: 1.5})
    assert g("coupled", CreditConfig(alpha=1.0)) == expect({0: 1.5, 2: 1.5, 7: 1.5, 9: 2.0})


def test_amp_below_one_dampens():
    assert g("global", CreditConfig(amp=0.5)) == expect({0: 0.5, 3: 0.5, 7: 0.5, 9: 0.5, 10: 0.5})


def test_fixed_thresholds_reach_the_roles():
    # tau_waad 2.5, tau_delta 4.5: D = [3], I = [2] (test_rhythm); anchors 0, 7, 9, 10 stay free
    config = CreditConfig(tau_waad=2.5, tau_delta=4.5)
    assert g("coupled", config) == expect({0: 1.5, 2: 1.25, 3: 1.25, 7: 1.5, 9: 1.5, 10: 1.5})


def test_entropy_top_and_bottom():
    # ceil(0.4 * 12) = 5 highest entropies: 3.0 (5), 2.5 (10), 2.0 (1), 1.5 (3), 1.1 (8)
    assert g("entropy") == expect({1: 1.5, 3: 1.5, 5: 1.5, 8: 1.5, 10: 1.5})
    # lowest: 0.0 (4), 0.1 (0), 0.2 (6), 0.3 (9), 0.5 (2)
    bottom = CreditConfig(selection="bottom")
    assert g("entropy", bottom) == expect({0: 1.5, 2: 1.5, 4: 1.5, 6: 1.5, 9: 1.5})


def test_bottom_selection_for_roles():
    # bottom preplan [1, 4, 5, 6, 7]; bottom anchors [1, 2, 4, 6, 8]; D = [1] with intro 0
    bottom = CreditConfig(selection="bottom")
    assert g("local", bottom) == expect({1: 1.5, 4: 1.5, 5: 1.5, 6: 1.5, 7: 1.5})
    assert g("global", bottom) == expect({1: 1.5, 2: 1.5, 4: 1.5, 6: 1.5, 8: 1.5})
    assert g("coupled", bottom) == expect({0: 1.25, 1: 1.25, 2: 1.5, 4: 1.5, 6: 1.5, 8: 1.5})


def test_other_q():
    # q = 0.2: ceil(2.2) = 3 anchors 0, 3, 7; D = [3] (t=7's window is too flat), intro 2
    config = CreditConfig(q=0.2)
    assert g("global", config) == expect({0: 1.5, 3: 1.5, 7: 1.5})
    assert g("coupled", config) == expect({0: 1.5, 2: 1.25, 3: 1.25, 7: 1.5})


def test_random_is_seeded_and_reproducible():
    first = g("random", CreditConfig(seed=7))
    assert first == g("random", CreditConfig(seed=7))
    boosted = [i for i, v in enumerate(first) if v == 1.5]
    assert len(boosted) == math.ceil(0.4 * N) == 5
    assert all(v in (1.0, 1.5) for v in first)
    assert boosted == random_selection(N, 0.4, 7)
    # other seeds give other subsets (not all 20 the same)
    subsets = {tuple(random_selection(N, 0.4, seed)) for seed in range(20)}
    assert len(subsets) > 1
    # the random baseline ignores the metrics entirely
    other = gamma(
        "random",
        waad=torch.zeros(N, dtype=torch.float64),
        fai=torch.full((N,), float("nan"), dtype=torch.float64),
        delta=torch.zeros(N, dtype=torch.float64),
        entropy=torch.zeros(N, dtype=torch.float64),
        config=CreditConfig(seed=7),
    ).tolist()
    assert other == first


@given(n=st.integers(0, 200), q=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_random_selection_properties(n, q, seed):
    chosen = random_selection(n, q, seed)
    assert len(chosen) == math.ceil(q * n)
    assert chosen == sorted(set(chosen))
    assert all(0 <= i < n for i in chosen)
    assert chosen == random_selection(n, q, seed)


def test_indicator():
    assert indicator(4, [3, 1]).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert indicator(3, set()).tolist() == [0.0, 0.0, 0.0]
    assert indicator(3, []).dtype == torch.float64


def test_unknown_strategy_and_bad_config():
    with pytest.raises(AttnRhythmError, match="unknown credit strategy"):
        g("anchor")
    for kwargs, match in [
        ({"selection": "middle"}, "selection"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"q": 0.0}, "bad q"),
        ({"q": 1.2}, "bad q"),
        ({"amp": 0.0}, "amp"),
    ]:
        with pytest.raises(AttnRhythmError, match=match):
            CreditConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# shaping: A~ = gamma * A where A >= 0, A where A < 0

GAMMAS = torch.tensor(
    [[1.0, 1.5, 1.25, 2.0], [1.5, 1.5, 1.0, 1.75], [2.0, 1.0, 1.5, 1.5]], dtype=torch.float64
)


def test_shape_sequence_advantages():
    adv = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    out = shape_advantages(adv, GAMMAS)
    assert out.shape == (3, 4)
    assert out[0].tolist() == [2.0, 3.0, 2.5, 4.0]  # positive: scaled
    assert out[1].tolist() == [-1.0, -1.0, -1.0, -1.0]  # negative: unchanged
    assert out[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_shape_token_advantages():
    adv = torch.tensor([[1.0, -2.0, 4.0, -0.5], [0.5, 0.5, -3.0, 2.0], [-1.0, -1.0, -1.0, 1.0]])
    out = shape_advantages(adv, GAMMAS)
    assert out.dtype == torch.float32  # the advantages' dtype, not gamma's
    assert out.tolist() == [[1.0, -2.0, 5.0, -0.5], [0.75, 0.75, -3.0, 3.5], [-1.0, -1.0, -1.0, 1.5]]


def test_shape_respects_the_mask():
    adv = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    out = shape_advantages(adv, GAMMAS, mask)
    assert out[0].tolist() == [1.0, 1.5, 1.0, 1.0]  # masked positions keep gamma = 1
    assert out[1].tolist() == [3.0, 2.0, 2.0, 2.0]
    assert out[2].tolist() == [-1.0] * 4
    bool_mask = mask.bool()
    assert torch.equal(shape_advantages(adv, GAMMAS, bool_mask), out)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        shape_advantages(torch.zeros(2), GAMMAS)
    with pytest.raises(ValueError, match="differ"):
        shape_advantages(torch.ones(1), GAMMAS)  # one advantage for three sequences: not broadcast
    with pytest.raises(ValueError, match="differ"):
        shape_advantages(torch.zeros(3, 5), GAMMAS)


def test_shape_with_none_strategy_is_identity():
    adv = torch.tensor([[0.3, -0.7, 1.1]])
    assert torch.equal(shape_advantages(adv, torch.ones(1, 3)), adv)


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    b=st.integers(1, 4),
    t=st.integers(1, 12),
)
def test_shape_property(data, b, t):
    floats = st.floats(-5, 5, allow_nan=False)
    adv = torch.tensor(data.draw(st.lists(floats, min_size=b * t, max_size=b * t))).reshape(b, t)
    gam = torch.tensor(data.draw(st.lists(st.floats(0.5, 2.0), min_size=b * t, max_size=b * t))).reshape(b, t)
    out = shape_advantages(adv, gam)
    for i in range(b):
        for j in range(t):
            a = float(adv[i, j])
            assert float(out[i, j]) == pytest.approx(a * float(gam[i, j]) if a >= 0 else a)
    assert torch.equal(out < 0, adv < 0)  # gamma > 0 never flips a sign


# ---------------------------------------------------------------------------------------------
# gamma_norm (mean gamma over each response's loss tokens = 1) and shape (positive | both)

MEAN = CreditConfig(gamma_norm="mean")
BOTH = CreditConfig(shape="both")


def _batch(data, b: int, t: int, *, signed: bool = True):
    """Per-response advantages (B,), gamma (B, T) and a loss mask with >= 1 token per row."""
    floats = st.floats(-5, 5, allow_nan=False) if signed else st.floats(0, 5, allow_nan=False)
    adv = torch.tensor(data.draw(st.lists(floats, min_size=b, max_size=b)), dtype=torch.float64)
    gam = torch.tensor(
        data.draw(st.lists(st.floats(0.25, 3.0), min_size=b * t, max_size=b * t)), dtype=torch.float64
    ).reshape(b, t)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).reshape(b, t)
    mask[:, 0] = True
    return adv, gam, mask


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), t=st.integers(1, 12), shape=st.sampled_from(["positive", "both"]))
def test_mean_norm_preserves_each_responses_mass(data, b, t, shape):
    adv, gam, mask = _batch(data, b, t)
    out = shape_advantages(adv, gam, mask, CreditConfig(gamma_norm="mean", shape=shape))
    for i in range(b):
        loss = mask[i]
        # sum of gamma * A over the loss tokens == sum of A over them, for A of either sign
        # (a negative A under "positive" is untouched, so its mass is trivially kept)
        assert float(out[i][loss].sum()) == pytest.approx(float(adv[i]) * int(loss.sum()), rel=1e-9, abs=1e-9)
        assert torch.equal(out[i][~loss], adv[i].expand(t)[~loss])  # outside the loss: A as it was
    norm = normalize_gamma(gam, mask)
    means = (norm * mask).sum(-1) / mask.sum(-1)
    torch.testing.assert_close(means, torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), t=st.integers(1, 12), norm=st.sampled_from(["none", "mean"]))
def test_positive_leaves_negative_advantages_untouched(data, b, t, norm):
    adv, gam, mask = _batch(data, b, t)
    tokens = adv[:, None] * gam  # token-level advantages of both signs
    for a in (adv, tokens):
        out = shape_advantages(a, gam, mask, CreditConfig(gamma_norm=norm))
        full = a if a.dim() == 2 else a[:, None].expand_as(gam)
        negative = full < 0
        assert torch.equal(out[negative], full[negative])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), t=st.integers(1, 12), norm=st.sampled_from(["none", "mean"]))
def test_both_scales_either_sign(data, b, t, norm):
    adv, gam, mask = _batch(data, b, t)
    out = shape_advantages(adv, gam, mask, CreditConfig(gamma_norm=norm, shape="both"))
    g = normalize_gamma(gam, mask, norm)
    torch.testing.assert_close(out, adv[:, None] * g, rtol=0, atol=0)
    assert torch.equal(out < 0, adv[:, None].expand_as(gam) < 0)  # gamma > 0 never flips a sign


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), t=st.integers(1, 12))
def test_defaults_are_the_papers_rule(data, b, t):
    """CreditConfig() (and no config at all) is the rule as it was before these knobs existed."""
    adv, gam, mask = _batch(data, b, t)
    full = adv[:, None].expand_as(gam)
    before = torch.where(full >= 0, full * torch.where(mask, gam, torch.ones_like(gam)), full)
    assert torch.equal(shape_advantages(adv, gam, mask), before)
    assert torch.equal(shape_advantages(adv, gam, mask, CreditConfig()), before)
    assert CreditConfig().gamma_norm == "none" and CreditConfig().shape == "positive"


def test_gamma_mean_norm_over_the_response():
    for strategy in STRATEGIES:
        raw = gamma(strategy, waad=WAAD, fai=FAI, delta=DELTA, entropy=ENTROPY)
        norm = gamma(strategy, waad=WAAD, fai=FAI, delta=DELTA, entropy=ENTROPY, config=MEAN)
        assert float(norm.mean()) == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(norm, raw / raw.mean(), rtol=0, atol=0)
        # scale-free: normalising again (as the shaping does over the loss tokens) changes nothing
        torch.testing.assert_close(normalize_gamma(norm[None])[0], norm, rtol=0, atol=1e-15)
    # coupled by hand: raw gamma sums to 12 + 3 * 0.5 + 2 * 0.25 + 2 * 0.25 = 14.5 over 12 tokens
    assert g("coupled", MEAN)[0] == pytest.approx(1.5 * 12 / 14.5)
    assert g("none", MEAN) == [1.0] * N


def test_normalize_gamma_edge_rows():
    gam = torch.tensor([[2.0, 1.0, 3.0], [1.5, 1.5, 1.0], [0.5, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    out = normalize_gamma(gam, mask)
    assert out[0].tolist() == pytest.approx([4 / 3, 2 / 3, 1.0])  # outside the mask: 1
    assert out[1].tolist() == [1.0, 1.0, 1.0]  # no loss token: no credit, nothing to normalise
    assert out[2].tolist() == pytest.approx([0.5 / 1.5, 2 / 1.5, 2 / 1.5])
    masked = torch.where(mask.bool(), gam, torch.ones_like(gam))
    assert torch.equal(normalize_gamma(gam, mask, "none"), masked)
    negative_mean = torch.tensor([[-1.0, 0.5]])  # only reachable with amp < 1: left as it is
    assert torch.equal(normalize_gamma(negative_mean), negative_mean)


def test_credit_knob_validation():
    with pytest.raises(AttnRhythmError, match="bad gamma_norm"):
        CreditConfig(gamma_norm="sum")
    with pytest.raises(AttnRhythmError, match="bad shape"):
        CreditConfig(shape="negative")
    with pytest.raises(AttnRhythmError, match="bad gamma_norm"):
        normalize_gamma(torch.ones(1, 2), norm="max")
