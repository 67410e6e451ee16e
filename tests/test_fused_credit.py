"""Fused credit: the statistics captured in TRL's own forward give the separate forward's gamma.

TRL's layout is a left-padded prompt followed by a right-padded completion, run without
position ids (absolute positions shifted by the padding; RoPE scores depend only on offsets),
the last ``logits_to_keep`` columns being the completion.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from test_train_trl import (  # noqa: E402
    RecordingTrainer,
    check_rule,
    make_trainer,
    rhythm_config,
    stub_batch,
    tiny_model,
)
from transformers import AutoTokenizer  # noqa: E402

from attnrhythm.analyze import Analyzer  # noqa: E402
from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.method.credit import STRATEGIES  # noqa: E402
from attnrhythm.rollout.credit import (  # noqa: E402
    capturing_rollout,
    credit_from_results,
    rollout_gamma,
    rollout_traces,
)
from attnrhythm.train import RhythmCreditConfig  # noqa: E402

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


def fused_results(analyzer, batch, chunk: int):
    """The capture inside a plain model forward over TRL's layout, chunk by chunk like TRL."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    keep = batch["completion_ids"].shape[1]
    results = []
    for start in range(0, ids.shape[0], chunk):
        with (
            torch.no_grad(),
            capturing_rollout(
                analyzer, ids[start : start + chunk], mask[start : start + chunk], keep, row_offset=start
            ) as found,
        ):
            analyzer.model(input_ids=ids[start : start + chunk], attention_mask=mask[start : start + chunk])
        results.extend(found.results)
    return results


@pytest.mark.parametrize("chunk", [5, 2])
def test_fused_gamma_equals_separate(tokenizer, chunk):
    """Left-padded prompts of 3-7 tokens, completions of 1-12 tokens right-padded, a masked row."""
    model = tiny_model(tokenizer)
    config = rhythm_config("coupled")
    # receiver heads on: the capture also carries their column band
    analyzer = Analyzer(model, replace(config.analysis_config(), receiver_count=None))
    batch = stub_batch(tokenizer)
    loss_mask = batch["completion_mask"] * batch["tool_mask"]
    fused = fused_results(analyzer, batch, chunk)
    assert sorted(b for b, _ in fused) == [0, 1, 4]  # 1-token and masked rows are not analysed
    for strategy in [s for s in STRATEGIES if s not in ("entropy", "none")]:
        separate = rollout_gamma(
            analyzer,
            strategy,
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            batch["completion_mask"],
            loss_mask,
            batch_size=2,
        )
        got = credit_from_results(
            config.credit_config(),
            strategy,
            fused,
            batch["completion_ids"],
            batch["completion_mask"],
            loss_mask,
        )
        assert torch.equal(got.gamma, separate.gamma), strategy
        assert got.counts == separate.counts
    # the metrics themselves agree to float precision (positions differ by the left padding)
    plain = {b: r for b, r in fused}
    todo = rollout_traces(
        analyzer, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
    )
    for b, trace in todo:
        res = analyzer.analyze([trace])[0]
        for name in ("waad", "fai", "delta", "distance", "fai_receiver"):
            torch.testing.assert_close(
                getattr(plain[b], name), getattr(res, name), rtol=1e-4, atol=1e-5, equal_nan=True
            )
        for role in ("preplan", "anchor", "dominated", "intro", "intro_of"):
            assert getattr(plain[b].roles, role) == getattr(res.roles, role), role
        assert "entropy" not in plain[b].gamma and torch.isnan(plain[b].entropy).all()


def make(tokenizer, path, rhythm, **args):
    return make_trainer(tokenizer, path, rhythm, cls=RecordingTrainer, **args)


def test_trainer_fused_equals_separate(tokenizer, tmp_path, monkeypatch):
    """num_iterations=2: TRL runs the old-logprob forward; fused skips the credit forward, same advantages."""
    runs = {}
    for mode in ("fused", "separate"):
        trainer = make(
            tokenizer,
            tmp_path / mode,
            rhythm_config("coupled", credit_forward=mode, batch_size=3),
            max_steps=2,
            num_iterations=2,
            per_device_train_batch_size=4,
        )
        assert trainer.rhythm_fused is (mode == "fused")
        if mode == "fused":  # no separate forward may run
            monkeypatch.setattr(Analyzer, "analyze", lambda self, traces: pytest.fail("credit forward ran"))
        trainer.train()
        monkeypatch.undo()
        logged = [h for h in trainer.state.log_history if "loss" in h]
        assert len(logged) == 2 and logged[0]["rhythm/fused"] == float(mode == "fused")  # step 2 reuses
        runs[mode] = trainer.records
    assert len(runs["fused"]) == len(runs["separate"]) == 1  # one rollout batch used twice
    for (b1, m1, a1), (b2, m2, a2) in zip(runs["fused"], runs["separate"]):
        assert torch.equal(b1, b2) and torch.equal(m1, m2)  # the same rollouts
        assert torch.equal(a1, a2)
        check_rule(b1, m1, a1, "coupled")


def test_auto_and_errors(tokenizer, tmp_path):
    """The old-logprob path where TRL runs that forward (the loss path otherwise: test_loss_credit.py)."""
    trainer = make(tokenizer, tmp_path, rhythm_config("coupled"), num_iterations=2)
    assert trainer.rhythm_fused is True and trainer.rhythm_credit_path == "old-logps"
    assert make(tokenizer, tmp_path, rhythm_config("entropy"), num_iterations=2).rhythm_fused is False
    separate = rhythm_config("coupled", credit_forward="separate")
    assert make(tokenizer, tmp_path, separate).rhythm_fused is False
    with pytest.raises(AttnRhythmError, match="entropy"):
        make(tokenizer, tmp_path, rhythm_config("entropy", credit_forward="fused"), num_iterations=2)
    with pytest.raises(AttnRhythmError, match="credit forward"):
        RhythmCreditConfig(credit_forward="both")


@pytest.mark.parametrize("gather", [True, False])
def test_separate_forward_uses_trl_unwrap_with_zero3_gather_flag(tokenizer, tmp_path, monkeypatch, gather):
    """The DeepSpeed path reachable without DeepSpeed: TRL's unwrap gets ``ds3_gather_for_generation``."""
    from contextlib import contextmanager

    import attnrhythm.train.credit_trainer as ct

    trainer = make(tokenizer, tmp_path, rhythm_config("coupled"), ds3_gather_for_generation=gather)
    calls = []
    real = ct.unwrap_model_for_generation

    @contextmanager
    def recording(model, accelerator, **kwargs):
        calls.append(kwargs)
        with real(model, accelerator, **kwargs) as unwrapped:
            yield unwrapped

    monkeypatch.setattr(ct, "unwrap_model_for_generation", recording)
    batch = stub_batch(tokenizer)
    trainer._apply_rhythm_credit(batch)
    assert len(calls) == 1 and calls[0]["gather_deepspeed3_params"] is gather
