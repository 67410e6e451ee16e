"""Fused rhythm credit in verl: the statistics from verl's own ``compute_log_prob`` forward.

tests/verl_fused_run.py runs verl's actor worker (FSDP2 on 1 and 2 gloo ranks, CPU) on rows with
tool spans inside responses, 1-token responses and two of verl's filler rows, in each of verl's
forward layouts (packed/remove-padding and padded, micro-batches, dynamic batch size, which
regroups rows). In every layout, with ``credit_forward=fused``:

* gamma and the per-row counts equal the separate credit forward's (``compute_rhythm_credit``),
  row by row, to float32 rounding;
* verl's log-probs are exactly those of the same call without the credit;
* the rows say the statistics came from verl's forward (``rhythm_fused`` = 1).

The ``entropy`` strategy, which verl's forward cannot carry: ``auto`` gives the separate forward's
gamma (``rhythm_fused`` = 0), ``fused`` fails in one line. A forward that does not carry its
rows (rank 0's tokens altered): ``auto`` falls back on every rank.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl")
import torch  # noqa: E402
from test_verl_engine import run_ranks  # noqa: E402
from verl_models import tiny_model  # noqa: E402

from attnrhythm.rollout.config import RhythmCreditConfig  # noqa: E402

LAYOUTS = ("packed", "padded", "packed_one_micro_batch", "packed_dynamic", "padded_dynamic")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("verl_fused_tiny"))


def check_rank(res: dict) -> None:
    lengths = res["response_lengths"]
    separate = res["separate"]
    assert torch.all(separate["fused"] == 0)
    assert any((g > 1).any() for g in separate["gamma"])  # the credit is not trivial
    assert sorted(res["cases"]) == sorted(LAYOUTS)
    for name, case in res["cases"].items():
        assert torch.all(case["fused"] == 1), name
        assert [g.shape[0] for g in case["gamma"]] == lengths, name
        for b, (got, want) in enumerate(zip(case["gamma"], separate["gamma"])):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} row {b}")
        torch.testing.assert_close(case["counts"], separate["counts"], rtol=1e-6, atol=1e-6, msg=name)
        for got, want in zip(case["log_probs"], case["log_probs_plain"]):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    # 1-token responses (and verl's filler rows, the last two) keep gamma = 1
    for b, n in enumerate(lengths):
        if n == 1:
            assert torch.all(separate["gamma"][b] == 1)
    # auto falls back to the separate forward where verl's cannot carry the credit; fused fails
    fallback = res["entropy_auto"]
    assert torch.all(fallback["fused"] == 0)
    for got, want in zip(fallback["gamma"], fallback["reference"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    error = res["entropy_fused_error"]
    assert "\n" not in error and "entropy strategy" in error and "credit_forward=auto or separate" in error
    # rank 0's forward did not carry its rows: every rank fell back, with the separate gamma
    unmatched = res["unmatched_auto"]
    assert torch.all(unmatched["fused"] == 0)
    for got, want in zip(unmatched["gamma"], separate["gamma"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert res["attn"] == "sdpa"  # verl's attention implementation is back after each call


def test_fused_equals_separate_one_rank(model_dir, tmp_path):
    (res,) = run_ranks(1, model_dir, tmp_path, script="verl_fused_run.py")
    check_rank(res)


def test_fused_equals_separate_two_gloo_ranks(model_dir, tmp_path):
    for res in run_ranks(2, model_dir, tmp_path, script="verl_fused_run.py"):
        check_rank(res)


def test_fused_refused_when_verl_skips_its_old_log_prob_forward():
    from test_verl_trainer import verl_config

    from attnrhythm.errors import AttnRhythmError
    from attnrhythm.integrations.verl.trainer import MODE, RhythmPPOTrainer

    config = verl_config(
        f"trainer.v1.trainer_mode={MODE}",
        f"+trainer.v1.{MODE}.credit_forward=fused",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "algorithm.rollout_correction.bypass_mode=true",
    )
    with pytest.raises(AttnRhythmError, match="bypass_mode=true skips") as err:
        RhythmPPOTrainer(config)  # before any worker starts
    assert "\n" not in str(err.value)


def test_fused_reasons():
    from attnrhythm.integrations.verl.fused import static_reason

    class Engine:
        ulysses_sequence_parallel_size = 1

    assert static_reason(RhythmCreditConfig(strategy="coupled"), Engine()) == ""
    assert "entropy" in static_reason(RhythmCreditConfig(strategy="entropy"), Engine())
    Engine.ulysses_sequence_parallel_size = 2
    assert "Ulysses" in static_reason(RhythmCreditConfig(strategy="coupled"), Engine())
