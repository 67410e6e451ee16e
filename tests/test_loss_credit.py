"""Credit in TRL's loss forward (``num_iterations=1``): the same gamma, loss and gradients as separate.

TRL 1.16 runs no old-logprob forward by default; the rhythm statistics are then captured in the
loss forward of each micro-batch and the advantages shaped before the loss is reduced. These tests
compare that path with the separate credit forward on the same model and rollouts.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from test_train_trl import (  # noqa: E402
    RecordingTrainer,
    check_rule,
    make_trainer,
    rhythm_config,
    stub_batch,
)
from transformers import AutoTokenizer  # noqa: E402

from attnrhythm.analyze import Analyzer  # noqa: E402
from attnrhythm.errors import AttnRhythmError  # noqa: E402

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


def loss_and_grads(trainer, inputs):
    """TRL's loss of one micro-batch (train mode, no accumulation) and the gradients it gives."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "strategy,selection",
    [("coupled", "top"), ("coupled", "bottom"), ("local", "top"), ("global", "top"), ("random", "top"),
     ("entropy", "top")],
)
def test_loss_forward_equals_separate(tokenizer, tmp_path, strategy, selection):
    """One micro-batch: shaped advantages, loss and every gradient equal the separate path's."""
    rc = dict(strategy=strategy, selection=selection)
    separate = make_trainer(
        tokenizer, tmp_path / "s", rhythm_config(**rc, credit_forward="separate", batch_size=2)
    )
    loss_path = make_trainer(tokenizer, tmp_path / "l", rhythm_config(**rc))
    assert separate.rhythm_credit_path == "separate" and loss_path.rhythm_credit_path == "loss"
    assert loss_path.rhythm_fused

    batch = stub_batch(tokenizer)
    expected = separate._apply_rhythm_credit(dict(batch))
    loss_s, grads_s = loss_and_grads(separate, expected)
    inputs = dict(batch)
    assert inputs["advantages"].dim() == 1
    loss_l, grads_l = loss_and_grads(loss_path, inputs)

    assert inputs["advantages"].shape == batch["completion_ids"].shape  # shaped in the loss forward
    assert torch.equal(inputs["advantages"], expected["advantages"])
    check_rule(batch["advantages"], batch["completion_mask"] * batch["tool_mask"], inputs["advantages"],
               strategy)
    assert torch.equal(loss_l, loss_s)
    assert grads_l.keys() == grads_s.keys() and grads_l
    for name in grads_s:
        assert torch.equal(grads_l[name], grads_s[name]), name
    metrics = {"separate": separate._metrics["train"], "loss": loss_path._metrics["train"]}
    assert metrics["separate"]["rhythm/fused"] == [0.0] and metrics["loss"]["rhythm/fused"] == [2.0]
    for key in ("rhythm/gamma_mean", "rhythm/amplified_share", "rhythm/anchor_share"):
        assert metrics["loss"][key] == metrics["separate"][key], key

    # a micro-batch used again keeps its (B, T) advantages: no second shaping
    again = inputs["advantages"].clone()
    loss_path.compute_loss(loss_path.model, inputs)
    assert torch.equal(inputs["advantages"], again)
    assert loss_path._metrics["train"]["rhythm/fused"] == [2.0]


def test_capture_leaves_the_loss_forward_unchanged(tokenizer, tmp_path):
    """With the same (B, T) advantages the loss and gradients are bit-identical with and without capture."""
    trainer = make_trainer(tokenizer, tmp_path, rhythm_config("coupled"))
    batch = stub_batch(tokenizer)
    shaped = dict(batch)
    with torch.no_grad():  # evaluation: no-grad loss forward, where the fused kernel could give outputs
        trainer.model.eval()
        trainer.compute_loss(trainer.model, shaped)  # shapes `shaped` (eval metrics)
    assert shaped["advantages"].dim() == 2 and trainer._metrics["eval"]["rhythm/fused"] == [2.0]
    plain = dict(shaped)
    loss_plain, grads_plain = loss_and_grads(trainer, plain)  # (B, T): no capture this time
    assert trainer._metrics["train"]["rhythm/fused"] == []
    captured = dict(batch)
    loss_cap, grads_cap = loss_and_grads(trainer, captured)
    assert torch.equal(captured["advantages"], shaped["advantages"])
    assert torch.equal(loss_cap, loss_plain)
    for name in grads_plain:
        assert torch.equal(grads_cap[name], grads_plain[name]), name


def test_gradient_accumulation_trains_like_separate(tokenizer, tmp_path, monkeypatch):
    """2 micro-batches per step, 2 steps: each micro-batch shaped in its own loss forward; same weights."""
    runs = {}
    for mode in ("separate", "auto"):
        trainer = make_trainer(
            tokenizer,
            tmp_path / mode,
            rhythm_config("coupled", credit_forward=mode, batch_size=3),
            cls=RecordingTrainer,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
        )
        if mode == "auto":
            assert trainer.rhythm_credit_path == "loss"
            monkeypatch.setattr(Analyzer, "analyze", lambda self, traces: pytest.fail("credit forward ran"))
        trainer.train()
        monkeypatch.undo()
        logged = [h for h in trainer.state.log_history if "loss" in h]
        assert len(logged) == 2
        assert {h["rhythm/fused"] for h in logged} == {0.0 if mode == "separate" else 2.0}
        runs[mode] = trainer
    # separate: one record per rollout batch of 4; loss: one per micro-batch of 2
    assert [r[0].shape[0] for r in runs["separate"].records] == [4, 4]
    assert [r[0].shape[0] for r in runs["auto"].records] == [2, 2, 2, 2]
    for before, mask, after in runs["auto"].records:
        assert after.shape == mask.shape
        plain = before[:, None].expand_as(after)
        keep = (plain < 0) | ~mask.bool()
        assert torch.equal(after[keep], plain[keep])  # negative advantages and masked tokens untouched
    shaped = torch.cat([(a != b[:, None]).flatten() for b, _, a in runs["auto"].records])
    assert shaped.any()  # some credit was given
    # the same rows, shaped the same way, in both runs (the loss path sees them after TRL's shuffle)
    def rows(records):
        out = {}
        for before, mask, after in records:
            for b in range(before.shape[0]):
                n = int(mask[b].sum())
                out.setdefault(round(float(before[b]), 6), []).append(after[b, :n].tolist())
        return {k: sorted(v) for k, v in out.items()}

    assert rows(runs["auto"].records) == rows(runs["separate"].records)
    params = {mode: dict(t.model.named_parameters()) for mode, t in runs.items()}
    for name, value in params["separate"].items():
        torch.testing.assert_close(params["auto"][name], value, rtol=0, atol=0, msg=name)


def test_paths_and_errors(tokenizer, tmp_path):
    def path(strategy, credit_forward="auto", **args):
        rc = rhythm_config(strategy, credit_forward=credit_forward)
        return make_trainer(tokenizer, tmp_path, rc, **args).rhythm_credit_path

    make = make_trainer
    assert path("coupled") == "loss" and path("coupled", "fused") == "loss"
    assert path("coupled", num_iterations=2) == "old-logps"
    assert path("entropy") == "loss"
    assert path("entropy", temperature=0.7) == "separate"
    assert path("entropy", num_iterations=2) == "separate"
    assert path("none") == "none"
    with pytest.raises(AttnRhythmError, match="temperature 0.7"):
        make(tokenizer, tmp_path, rhythm_config("entropy", credit_forward="fused"), temperature=0.7)
    with pytest.raises(AttnRhythmError, match="old-logprob forward computes none"):
        make(tokenizer, tmp_path, rhythm_config("entropy", credit_forward="fused"), num_iterations=2)


def test_liger_flag_keeps_token_level_advantages(tokenizer, tmp_path):
    """TRL 1.16's ``use_liger_kernel`` applies layer kernels only: its loss takes the (B, T) advantages.

    Liger's Triton kernels need a GPU and are applied by ``train()``; here the flag is set and the
    loss of the flagged trainer equals the unflagged one's, with the same shaped advantages.
    """
    flagged = make_trainer(tokenizer, tmp_path / "liger", rhythm_config("coupled"), use_liger_kernel=True)
    plain = make_trainer(tokenizer, tmp_path / "plain", rhythm_config("coupled"))
    assert flagged.args.use_liger_kernel and flagged.rhythm_credit_path == "loss"
    assert not flagged.args.liger_kernel_config["fused_linear_cross_entropy"]  # TRL keeps its own loss
    batch = stub_batch(tokenizer)
    a, b = dict(batch), dict(batch)
    loss_f, grads_f = loss_and_grads(flagged, a)
    loss_p, grads_p = loss_and_grads(plain, b)
    assert a["advantages"].dim() == 2 and torch.equal(a["advantages"], b["advantages"])
    assert torch.equal(loss_f, loss_p)
    for name in grads_p:
        assert torch.equal(grads_f[name], grads_p[name]), name
