"""rhythm.py against values computed by hand from docs/method.md sections 1-4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.rhythm import (
    classify_heads,
    default_layers,
    delta,
    entropy_from_logits,
    fai,
    fai_counts,
    find_roles,
    head_distance,
    mean_over_heads,
    nan_median,
    parse_horizon,
    parse_layers,
    round_half_up,
    top_q,
    waad,
)

NAN = float("nan")


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# layers (section 1)


@pytest.mark.parametrize(
    ("n_layers", "expected"),
    [
        (30, [10, 13, 15, 18, 20]),  # linspace(10, 20, 5) = 10, 12.5, 15, 17.5, 20: halves go up
        (28, [9, 11, 14, 16, 18]),  # 9, 11.25, 13.5, 15.75, 18
        (36, [12, 15, 18, 21, 24]),
        (12, [4, 5, 6, 7, 8]),
        (2, [0, 1]),  # 0, .25, .5, .75, 1 -> 0, 0, 1, 1, 1
        (1, [0]),  # linspace(0, 0, 5)
        (3, [1, 2]),  # 1, 1.25, 1.5, 1.75, 2 -> 1, 1, 2, 2, 2
    ],
)
def test_default_layers(n_layers, expected):
    assert default_layers(n_layers) == expected


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49, 12.5, 0.0, 3.0)] == [1, 2, 3, 2, 13, 0, 3]


def test_parse_layers_named_specs():
    assert parse_layers(None, 30) == [10, 13, 15, 18, 20]
    assert parse_layers("mid5", 30) == [10, 13, 15, 18, 20]
    assert parse_layers("all", 4) == [0, 1, 2, 3]


def test_parse_layers_lists_and_negative_indices():
    assert parse_layers("-1", 30) == [29]
    assert parse_layers("3,-1,3", 30) == [3, 29]  # duplicates go, sorted
    assert parse_layers(" 7, 2 ,-30", 30) == [0, 2, 7]
    assert parse_layers("2,-28", 30) == [2]  # -28 is layer 2 again
    assert parse_layers([5, 2, -1], 6) == [2, 5]
    assert parse_layers("0", 1) == [0]


@pytest.mark.parametrize("spec", ["30", "-31", "0,30", [30], [-31]])
def test_parse_layers_out_of_range(spec):
    with pytest.raises(AttnRhythmError, match="out of range"):
        parse_layers(spec, 30)


@pytest.mark.parametrize("spec", ["a", "1,b", "mid6", "1.5", "1;2"])
def test_parse_layers_bad_strings(spec):
    with pytest.raises(AttnRhythmError, match="bad --layers"):
        parse_layers(spec, 30)


@pytest.mark.parametrize("spec", ["", ",", []])
def test_parse_layers_empty(spec):
    with pytest.raises(AttnRhythmError, match="empty"):
        parse_layers(spec, 30)


# ---------------------------------------------------------------------------------------------
# FAI horizon


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10:50", (10, 50)),
        ("10:end", (10, None)),
        ("0:END", (0, None)),
        (" 3 : 7 ", (3, 7)),
        ("5:5", (5, 5)),
        ("0:0", (0, 0)),
        ((10, 50), (10, 50)),
        ((4, None), (4, None)),
    ],
)
def test_parse_horizon(spec, expected):
    assert parse_horizon(spec) == expected


@pytest.mark.parametrize("spec", ["10", "10-50", "a:b", "1:2:3", ":5", "5:", "", "end:10", "1.5:3"])
def test_parse_horizon_bad_syntax(spec):
    with pytest.raises(AttnRhythmError, match="bad FAI horizon"):
        parse_horizon(spec)


@pytest.mark.parametrize("spec", ["50:10", "-1:5", "-3:end", (5, 4), (-1, None)])
def test_parse_horizon_bad_range(spec):
    with pytest.raises(AttnRhythmError, match="0 <= LO <= HI"):
        parse_horizon(spec)


# ---------------------------------------------------------------------------------------------
# head classes (section 2)


def test_head_distance_is_the_mean_over_response_rows():
    rows = t64([[[1, 2, 3], [0, 0, 3]], [[4, 4, 4], [1, 1, 1]]])  # (L=2, H=2, n=3)
    assert head_distance(rows.sum(-1), 3).tolist() == [[2.0, 1.0], [4.0, 1.0]]
    with pytest.raises(AttnRhythmError, match="at least one response token"):
        head_distance(rows.sum(-1), 0)


def test_classify_heads_by_hand():
    # 2 layers x 5 heads = 10 heads: m = round(3.0) = 3
    distance = t64([[5.0, 1.0, 9.0, 3.0, 7.0], [2.0, 8.0, 4.0, 6.0, 0.5]])
    classes = classify_heads(distance)
    # ascending: 0.5 (1,4), 1 (0,1), 2 (1,0), 3 (0,3), ..., 7 (0,4), 8 (1,1), 9 (0,2)
    assert classes.local == [(0, 1), (1, 0), (1, 4)]
    assert classes.global_ == [(0, 2), (0, 4), (1, 1)]


def test_classify_heads_tie_rule():
    # all six spans equal: the sort keeps (layer, head) order, H_loc takes the first m, H_glob the last m
    classes = classify_heads(torch.ones(2, 3, dtype=torch.float64))  # m = round(1.8) = 2
    assert classes.local == [(0, 0), (0, 1)]
    assert classes.global_ == [(1, 1), (1, 2)]
    # a tie across the local boundary: (0, 2) and (1, 0) both have span 2; the lower pair is local
    classes = classify_heads(t64([[1.0, 5.0, 2.0], [2.0, 9.0, 8.0]]))
    assert classes.local == [(0, 0), (0, 2)]
    # a tie across the global boundary: (0, 1) and (1, 2) both have span 8; the lower sorts first,
    # so the higher pair is among the largest
    classes = classify_heads(t64([[1.0, 8.0, 2.0], [3.0, 9.0, 8.0]]))
    assert classes.global_ == [(1, 1), (1, 2)]


@pytest.mark.parametrize(
    ("n_heads", "m"),
    [
        (1, 1),  # round(0.3) = 0 -> max(1, 0)
        (2, 1),  # 0.6
        (5, 2),  # 1.5 -> 2
        (10, 3),
        (15, 5),  # 4.5 -> 5 (banker's rounding would give 4)
        (35, 11),  # 10.5 -> 11 (banker's rounding would give 10)
        (270, 81),  # SmolLM2 with all 30 layers x 9 heads
        (45, 14),  # mid5 x 9 heads: 13.5 -> 14
    ],
)
def test_classify_heads_count(n_heads, m):
    distance = torch.arange(n_heads, dtype=torch.float64).flip(0)[None, :]
    classes = classify_heads(distance)
    assert len(classes.local) == len(classes.global_) == m
    assert classes.local == [(0, h) for h in range(n_heads - m, n_heads)]  # spans decrease with h
    assert classes.global_ == [(0, h) for h in range(m)]


def test_classify_heads_other_quantiles_and_one_head():
    d = torch.arange(10, dtype=torch.float64).reshape(2, 5)
    classes = classify_heads(d, 0.5)  # m = 5: every head is local or global
    assert classes.local == [(0, h) for h in range(5)]
    assert classes.global_ == [(1, h) for h in range(5)]
    one = classify_heads(t64([[3.0]]))
    assert one.local == one.global_ == [(0, 0)]
    for bad in (0.0, 0.51, -0.1, 1.0):
        with pytest.raises(AttnRhythmError, match="head quantile"):
            classify_heads(d, bad)


# ---------------------------------------------------------------------------------------------
# metrics (section 3)


def test_mean_over_heads_and_waad():
    rows = t64([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])  # (L=2, H=2, n=2)
    assert mean_over_heads(rows, [(0, 1), (1, 0)]).tolist() == [4.0, 5.0]
    assert waad(rows, [(1, 1)]).tolist() == [7.0, 8.0]


@pytest.mark.parametrize(
    ("n", "horizon", "expected"),
    [
        (6, (1, 2), [2, 2, 2, 2, 1, 0]),  # s=4: t in [5, 5]; s=5: [6, 5] empty
        (4, (0, None), [4, 3, 2, 1]),
        (4, (2, None), [2, 1, 0, 0]),
        (5, (10, 50), [0, 0, 0, 0, 0]),
        (3, (0, 0), [1, 1, 1]),
        (8, (3, 4), [2, 2, 2, 2, 1, 0, 0, 0]),
        (1, (0, None), [1]),
    ],
)
def test_fai_counts(n, horizon, expected):
    assert fai_counts(n, horizon).tolist() == expected


def test_fai_by_hand():
    # 1 layer, 3 heads, n = 4; global heads (0, 0) and (0, 2); horizon (1, 2): counts 2, 2, 1, 0
    cols = t64([[[2.0, 4.0, 1.0, 7.0], [100.0, 100.0, 100.0, 100.0], [4.0, 0.0, 3.0, 1.0]]])
    got = fai(cols, [(0, 0), (0, 2)], (1, 2))
    assert got[:3].tolist() == [3.0 / 2, 2.0 / 2, 2.0 / 1]
    assert math.isnan(got[3])


def test_delta():
    got = delta(t64([1.0, 4.0, 2.0, 2.0, 0.5]))
    assert got[:-1].tolist() == [3.0, 2.0, 0.0, 1.5]
    assert math.isnan(got[-1])
    assert math.isnan(delta(t64([5.0]))[0])


def test_entropy_from_logits():
    got = entropy_from_logits(torch.zeros(2, 8))
    torch.testing.assert_close(got, torch.full((2,), math.log(8)))
    peaked = torch.tensor([[0.0, -1e4, -1e4]])
    assert float(entropy_from_logits(peaked)[0]) == pytest.approx(0.0, abs=1e-6)
    two = torch.log(torch.tensor([[0.25, 0.75]]))
    assert float(entropy_from_logits(two)[0]) == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    )


# ---------------------------------------------------------------------------------------------
# TopQ and the median (section 4)


def test_top_q_by_hand():
    x = t64([3.0, 1.0, 3.0, NAN, 2.0])  # 4 defined
    assert top_q(x, 0.4) == [0, 2]  # ceil(1.6) = 2
    assert top_q(x, 0.5) == [0, 2]
    assert top_q(x, 0.6) == [0, 2, 4]  # ceil(2.4) = 3
    assert top_q(x, 1.0) == [0, 1, 2, 4]
    assert top_q(x, 0.1) == [0]  # ceil(0.4) = 1; the tie 3 = 3 goes to the lower index
    assert top_q(x, 0.4, bottom=True) == [1, 4]
    assert top_q(x, 0.6, bottom=True) == [0, 1, 4]  # the tie at 3 again: the lower index


def test_top_q_ties_and_undefined():
    assert top_q(t64([5.0, 5.0, 5.0, 5.0]), 0.5) == [0, 1]
    assert top_q(t64([5.0, 5.0, 5.0, 5.0]), 0.5, bottom=True) == [0, 1]
    assert top_q(t64([1.0, 7.0, 2.0, 7.0, 7.0]), 0.4) == [1, 3]
    assert top_q(t64([NAN, NAN]), 0.4) == []
    assert top_q(t64([]), 0.4) == []
    assert top_q(t64([NAN, 2.0, NAN]), 0.01) == [1]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(AttnRhythmError, match="bad q"):
            top_q(t64([1.0]), bad)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(st.integers(-3, 3).map(float), st.just(NAN)), max_size=40),
    q=st.floats(0.01, 1.0),
    bottom=st.booleans(),
)
def test_top_q_properties(values, q, bottom):
    x = t64(values)
    chosen = top_q(x, q, bottom=bottom)
    defined = [i for i, v in enumerate(values) if not math.isnan(v)]
    assert len(chosen) == math.ceil(q * len(defined))
    assert chosen == sorted(set(chosen))
    assert set(chosen) <= set(defined)
    rest = [i for i in defined if i not in chosen]
    for i in chosen:
        for j in rest:
            if bottom:
                assert values[i] <= values[j]
            else:
                assert values[i] >= values[j]
            if values[i] == values[j]:
                assert i < j  # ties: the lower index is taken first


def test_nan_median():
    assert nan_median(t64([1.0, NAN, 3.0, 2.0, 10.0])) == 2.5  # even count: mean of 2 and 3
    assert nan_median(t64([3.0, 1.0, 2.0])) == 2.0
    assert nan_median(t64([4.0])) == 4.0
    assert math.isnan(nan_median(t64([NAN, NAN])))
    assert math.isnan(nan_median(t64([])))
    assert nan_median(torch.tensor([1.0, 2.0], dtype=torch.float32)) == 1.5


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30))
def test_nan_median_is_numpy_median(values):
    assert nan_median(t64(values)) == pytest.approx(float(np.median(values)), rel=1e-12, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# roles (section 4) on a hand-made response of 12 tokens

#            0    1    2    3    4    5    6    7    8    9    10   11
WAAD = t64([1.0, 6.0, 7.0, 2.0, 8.0, 9.0, 7.0, 3.0, 6.0, 8.0, 6.0, 5.0])
DELTA = t64([5.0, 2.0, 5.0, 6.0, 0.5, 1.0, 1.0, 1.0, 3.0, 4.0, 2.0, NAN])
FAI = t64([0.9, 0.1, 0.2, 0.8, 0.15, 0.3, 0.05, 0.7, 0.25, 0.6, 0.5, NAN])
# By hand:
# tau_waad = median WAAD: sorted 1 2 3 5 6 6 | 6 7 7 8 8 9 -> (6 + 6) / 2 = 6
# tau_delta = median of the 11 defined Delta: 0.5 1 1 1 2 [2] 3 4 5 5 6 -> 2
# preplan = TopQ(Delta, 0.4): ceil(4.4) = 5 largest: 6 (3), 5 (0), 5 (2), 4 (9), 3 (8)
# anchors = TopQ(FAI, 0.4): ceil(4.4) = 5 largest: 0.9 (0), 0.8 (3), 0.7 (7), 0.6 (9), 0.5 (10)
# t=0:  WAAD 1 <= 6 but no u in [t-3, t-1] with u >= 0 -> not dominated
# t=3:  WAAD 2 <= 6; Delta over u = 0, 1, 2 is 5, 2, 5: max 5 >= 2, tie between 0 and 2 -> intro 2
# t=7:  WAAD 3 <= 6; Delta over u = 4, 5, 6 is 0.5, 1, 1: max 1 < 2 -> not dominated
# t=9:  WAAD 8 > 6 -> not dominated
# t=10: WAAD 6 <= 6 (equality counts); Delta over 7, 8, 9 is 1, 3, 4: max 4 at 9 -> intro 9


def test_find_roles_by_hand():
    roles = find_roles(WAAD, FAI, DELTA)
    assert roles.tau_waad == 6.0
    assert roles.tau_delta == 2.0
    assert roles.preplan == [0, 2, 3, 8, 9]
    assert roles.anchor == [0, 3, 7, 9, 10]
    assert roles.dominated == [3, 10]
    assert roles.intro_of == {3: 2, 10: 9}
    assert roles.intro == [2, 9]


def test_find_roles_longer_look_back():
    # k = 5: t=7 now sees u = 2..6 with Delta 5, 6, 0.5, 1, 1: max 6 at u=3 -> dominated, intro 3;
    # t=10 sees 5..9 (1, 1, 1, 3, 4) -> intro 9; t=3 sees 0..2 as before -> intro 2
    roles = find_roles(WAAD, FAI, DELTA, k=5)
    assert roles.dominated == [3, 7, 10]
    assert roles.intro_of == {3: 2, 7: 3, 10: 9}
    assert roles.intro == [2, 3, 9]
    # k = 1: only u = t-1: t=3 -> 2 (Delta 5), t=7 -> 6 (Delta 1 < 2: no), t=10 -> 9 (Delta 4)
    roles = find_roles(WAAD, FAI, DELTA, k=1)
    assert roles.intro_of == {3: 2, 10: 9}
    with pytest.raises(AttnRhythmError, match="bad k"):
        find_roles(WAAD, FAI, DELTA, k=0)


def test_find_roles_fixed_thresholds():
    # tau_waad 2.5 keeps only t=3 (WAAD 2) and t=0 (no window); tau_delta 4.5 still passes at t=3 (5)
    roles = find_roles(WAAD, FAI, DELTA, tau_waad=2.5, tau_delta=4.5)
    assert (roles.tau_waad, roles.tau_delta) == (2.5, 4.5)
    assert roles.dominated == [3] and roles.intro == [2]
    # tau_delta 5.5: the best Delta before t=3 is 5 -> nobody is dominated
    roles = find_roles(WAAD, FAI, DELTA, tau_delta=5.5)
    assert roles.dominated == [] and roles.intro == [] and roles.intro_of == {}


def test_find_roles_bottom_selection():
    # bottom 5 Delta: 0.5 (4), 1 (5), 1 (6), 1 (7), 2 (1) -- the tie at 2 with index 10 goes to 1
    # bottom 5 FAI: 0.05 (6), 0.1 (1), 0.15 (4), 0.2 (2), 0.25 (8)
    # t=1: WAAD 6 <= 6, u = 0 has Delta 5 >= 2 -> dominated, intro 0; t=2, 4, 6: WAAD > 6;
    # t=8: WAAD 6, Delta over 5, 6, 7 is 1, 1, 1 < 2 -> not dominated
    roles = find_roles(WAAD, FAI, DELTA, bottom=True)
    assert roles.preplan == [1, 4, 5, 6, 7]
    assert roles.anchor == [1, 2, 4, 6, 8]
    assert roles.dominated == [1]
    assert roles.intro_of == {1: 0}


def test_find_roles_intro_tie_prefers_the_closest_u():
    # anchor at t=4 with Delta 3, 3, 3 over u = 1, 2, 3: the intro is u = 3
    w = t64([9.0, 9.0, 9.0, 9.0, 0.0, 9.0])
    d = t64([0.0, 3.0, 3.0, 3.0, 0.0, NAN])
    f = t64([0.0, 0.0, 0.0, 0.0, 1.0, NAN])
    roles = find_roles(w, f, d, q=0.2)  # ceil(0.2 * 5) = 1 anchor: t=4
    assert roles.anchor == [4]
    assert roles.intro_of == {4: 3}
    # undefined Delta inside the window is skipped: u = 3 NaN -> the tie 1, 2 goes to 2
    d2 = t64([0.0, 3.0, 3.0, NAN, 0.0, NAN])
    roles = find_roles(w, f, d2, q=0.2, tau_delta=1.0)
    assert roles.intro_of == {4: 2}
