"""verl's padded and no-padding layouts, and the advantage shaping on verl tensors.

verl's own converters (``verl.workers.utils.padding``) and its agent loop's way of stacking rows
(``tensordict_utils.list_of_dict_to_tensordict``) are the references.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl")
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.utils.padding import response_to_nested  # noqa: E402

from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.integrations.verl.layout import (  # noqa: E402
    nested_to_padded,
    padded_rollout,
    padded_to_nested,
    response_layout,
)
from attnrhythm.integrations.verl.trainer import rhythm_metrics, shape_verl_advantages  # noqa: E402
from attnrhythm.method.credit import CreditConfig, shape_advantages  # noqa: E402


def rows(lengths: list[tuple[int, int]], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for plen, rlen in lengths:
        mask = (torch.rand(rlen, generator=gen) > 0.2).long()
        out.append(
            dict(
                prompts=torch.randint(1, 50, (plen,), generator=gen),
                responses=torch.randint(1, 50, (rlen,), generator=gen),
                response_mask=mask,
            )
        )
    return out


def nested_batch(data: list[dict[str, torch.Tensor]]):
    return tu.list_of_dict_to_tensordict(data)  # how verl's agent loop stacks rows for the TransferQueue


def padded_batch(data: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width_p = max(len(r["prompts"]) for r in data)
    width_r = max(len(r["responses"]) for r in data)
    prompts = torch.zeros(len(data), width_p, dtype=torch.long)
    responses = torch.zeros(len(data), width_r, dtype=torch.long)
    attention = torch.zeros(len(data), width_p + width_r, dtype=torch.long)
    response_mask = torch.zeros(len(data), width_r, dtype=torch.long)
    for b, r in enumerate(data):
        p, n = len(r["prompts"]), len(r["responses"])
        prompts[b, width_p - p :] = r["prompts"]
        responses[b, :n] = r["responses"]
        attention[b, width_p - p : width_p + n] = 1
        response_mask[b, :n] = r["response_mask"]
    return dict(prompts=prompts, responses=responses, attention_mask=attention, response_mask=response_mask)


LENGTHS = [(5, 9), (2, 1), (7, 14), (1, 6)]


def test_nested_and_padded_layouts_give_the_same_grid():
    data = rows(LENGTHS)
    from_nested = padded_rollout(nested_batch(data))
    from_padded = padded_rollout(padded_batch(data))
    assert from_nested.nested and not from_padded.nested
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "loss_mask"):
        torch.testing.assert_close(getattr(from_nested, name), getattr(from_padded, name), rtol=0, atol=0)
    assert from_nested.response_lengths.tolist() == [n for _, n in LENGTHS]
    # the prompt is left-padded: its last token sits next to the first response token
    for b, r in enumerate(data):
        assert from_nested.prompt_ids[b, -1] == r["prompts"][-1]
        assert from_nested.prompt_mask[b].sum() == len(r["prompts"])


def test_padded_to_nested_matches_verls_response_to_nested():
    data = rows(LENGTHS, seed=1)
    nested = nested_batch(data)
    values = torch.randn(len(data), max(n for _, n in LENGTHS))
    ours = padded_to_nested(values, padded_rollout(nested).response_lengths)
    verls = response_to_nested(values, nested["response_mask"])
    assert torch.equal(ours.offsets(), verls.offsets())
    torch.testing.assert_close(ours.values(), verls.values(), rtol=0, atol=0)
    # and back: right-padded like torch's own to_padded_tensor
    back = nested_to_padded(ours)
    torch.testing.assert_close(back, ours.to_padded_tensor(0.0), rtol=0, atol=0)


def test_response_layout_follows_the_batch():
    data = rows(LENGTHS, seed=2)
    grid = torch.randn(len(data), max(n for _, n in LENGTHS))
    nested = response_layout(grid, padded_rollout(nested_batch(data)))
    assert nested.is_nested and [t.shape[0] for t in nested.unbind()] == [n for _, n in LENGTHS]
    assert response_layout(grid, padded_rollout(padded_batch(data))) is grid


def test_layout_errors_are_one_line():
    data = padded_batch(rows(LENGTHS))
    for key in ("responses", "attention_mask"):
        broken = {k: v for k, v in data.items() if k != key}
        with pytest.raises(AttnRhythmError, match=key):
            padded_rollout(broken)
    mixed = dict(nested_batch(rows(LENGTHS)).items())
    mixed["response_mask"] = data["response_mask"]
    with pytest.raises(AttnRhythmError, match="all be nested"):
        padded_rollout(mixed)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_shaping_nested_equals_padded_equals_method(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = (torch.rand(n, generator=gen) > 0.3).long()
    score = torch.randn(len(lengths), 1, generator=gen)
    advantages = score * mask  # GRPO: one value per sequence on its response tokens
    gamma = 1 + torch.randint(0, 3, (len(lengths), width), generator=gen).float() * 0.25
    n = torch.tensor(lengths)

    padded = shape_verl_advantages(advantages, gamma, mask)
    torch.testing.assert_close(padded, shape_advantages(advantages, gamma, mask), rtol=0, atol=0)
    nested = shape_verl_advantages(
        padded_to_nested(advantages, n), padded_to_nested(gamma, n), padded_to_nested(mask, n)
    )
    assert nested.is_nested
    for b, length in enumerate(lengths):
        torch.testing.assert_close(nested.unbind()[b], padded[b, :length], rtol=0, atol=0)
    # docs/method.md: gamma only where A >= 0 and inside the mask
    expected = torch.where((advantages >= 0) & mask.bool(), advantages * gamma, advantages)
    torch.testing.assert_close(padded, expected, rtol=0, atol=0)
    # gamma_norm / shape: per row on the nested layout as on the padded one
    for credit in (CreditConfig(gamma_norm="mean"), CreditConfig(shape="both", gamma_norm="mean")):
        dense = shape_verl_advantages(advantages, gamma, mask, credit)
        torch.testing.assert_close(dense, shape_advantages(advantages, gamma, mask, credit), rtol=0, atol=0)
        jagged = shape_verl_advantages(
            padded_to_nested(advantages, n), padded_to_nested(gamma, n), padded_to_nested(mask, n), credit
        )
        for b, length in enumerate(lengths):
            torch.testing.assert_close(jagged.unbind()[b], dense[b, :length], rtol=1e-6, atol=1e-7)
            loss = mask[b].bool()
            torch.testing.assert_close(dense[b][loss].sum(), advantages[b][loss].sum(), rtol=1e-5, atol=1e-5)


def test_shaping_refuses_mismatched_layouts():
    n = torch.tensor([3, 2])
    adv = padded_to_nested(torch.ones(2, 3), n)
    with pytest.raises(AttnRhythmError):
        shape_verl_advantages(adv, torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(AttnRhythmError, match="lengths"):
        other = padded_to_nested(torch.ones(2, 3), torch.tensor([2, 3]))
        shape_verl_advantages(adv, other, other)


def test_rhythm_metrics_names_and_values():
    totals = dict(
        sequences=4,
        analysed=3,
        tokens=20,
        gamma_sum=26,
        amplified=8,
        preplan=5,
        anchor=6,
        dominated=2,
        intro=1,
    )
    got = rhythm_metrics(totals, seconds=0.5)
    assert set(got) == {
        "rhythm/gamma_mean",
        "rhythm/amplified_share",
        "rhythm/preplan_share",
        "rhythm/anchor_share",
        "rhythm/dominated_share",
        "rhythm/intro_share",
        "rhythm/analysed_share",
        "rhythm/seconds",
    }
    assert got["rhythm/gamma_mean"] == pytest.approx(1.3)
    assert got["rhythm/amplified_share"] == pytest.approx(0.4)
    assert got["rhythm/anchor_share"] == pytest.approx(0.3)
    assert got["rhythm/analysed_share"] == pytest.approx(0.75)
    assert got["rhythm/seconds"] == 0.5
    assert rhythm_metrics({}, 0.0)["rhythm/gamma_mean"] == 1.0  # plain GRPO
