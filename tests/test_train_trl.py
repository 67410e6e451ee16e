"""RhythmGRPOTrainer on TRL 1.16: short CPU runs for every strategy, the hook's shaping rule, resume.

A tiny random Llama (2 layers, hidden 32, 4 heads, 2 kv heads) with the embedded model's
tokenizer; the toy reward (share of lowercase letters) keeps advantages non-zero.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from attnrhythm.analyze import Analyzer, TraceInput  # noqa: E402
from attnrhythm.config import parse_heads  # noqa: E402
from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.method.credit import gamma  # noqa: E402
from attnrhythm.rollout.credit import sequence_seed  # noqa: E402
from attnrhythm.rollout.heads import head_set_change  # noqa: E402
from attnrhythm.tasks import get_task  # noqa: E402
from attnrhythm.train import RhythmCreditConfig, RhythmGRPOTrainer, task_reward_func  # noqa: E402

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CASES = [
    ("none", "top"),
    ("random", "top"),
    ("entropy", "top"),
    ("local", "top"),
    ("global", "top"),
    ("coupled", "top"),
    ("coupled", "bottom"),
]
RHYTHM_KEYS = ("rhythm/gamma_mean", "rhythm/amplified_share", "rhythm/seconds")
ROLE_KEYS = ("rhythm/preplan_share", "rhythm/anchor_share", "rhythm/dominated_share", "rhythm/intro_share")
# gamma values possible with amp = 1.5, alpha = 0.5 (coupled terms add up where sets overlap)
ALLOWED = torch.tensor([1.0, 1.25, 1.5, 1.75])


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


def tiny_model(tokenizer, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,  # peaked, input-dependent attention (0.02 gives near-uniform maps)
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def lowercase_share(prompts, completions, **kwargs):
    return [sum(c.islower() for c in text) / (len(text) + 1) for text in completions]


def prompts_dataset():
    return datasets.Dataset.from_list([{"prompt": f"Question {i}: add {i} and {i + 3}."} for i in range(8)])


def grpo_args(path, **overrides) -> GRPOConfig:
    settings = dict(
        output_dir=str(path),
        use_cpu=True,
        report_to=[],
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        fp16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


def rhythm_config(strategy: str, selection: str = "top", **overrides) -> RhythmCreditConfig:
    # a short FAI horizon and WAAD window give 12-token completions non-trivial roles
    return RhythmCreditConfig(
        strategy=strategy, selection=selection, fai_horizon=(2, 8), window=4, **overrides
    )


class RecordingTrainer(RhythmGRPOTrainer):
    """Keeps (plain advantages, loss mask, shaped advantages) of every rollout batch."""

    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    def _apply_rhythm_credit(self, output):
        before = output["advantages"].clone()
        mask = output["completion_mask"].clone()
        out = super()._apply_rhythm_credit(output)
        self.records.append((before, mask, out["advantages"].clone()))
        return out


def make_trainer(tokenizer, path, rhythm, cls=RhythmGRPOTrainer, **args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls(
            tiny_model(tokenizer),
            reward_funcs=lowercase_share,
            args=grpo_args(path, **args),
            train_dataset=prompts_dataset(),
            processing_class=tokenizer,
            rhythm=rhythm,
        )
    if cls is RecordingTrainer:
        trainer.records = []
    return trainer


def check_rule(before: torch.Tensor, mask: torch.Tensor, after: torch.Tensor, strategy: str) -> None:
    """The shaped advantages follow A~ = gamma * A where A >= 0 (gamma in ALLOWED), else A."""
    if strategy == "none":
        assert after.shape == before.shape and torch.equal(after, before)
        return
    assert after.shape == mask.shape
    plain = before[:, None].expand_as(after)
    keep = (plain < 0) | ~mask.bool()
    assert torch.equal(after[keep], plain[keep])  # negative advantages and masked positions untouched
    pos = (plain > 0) & mask.bool()
    assert pos.any()
    ratio = after[pos] / plain[pos]
    assert torch.isclose(ratio[:, None], ALLOWED[None, :], atol=1e-5).any(dim=1).all(), ratio
    assert (ratio > 1 + 1e-6).any()  # some credit was given
    zero = (plain == 0) & mask.bool()
    assert torch.equal(after[zero], plain[zero])


def stub_batch(tokenizer):
    """A rollout batch as TRL 1.16 builds it: left-padded prompts, right-padded completions.

    Rows: a full 12-token completion; a 6-token one with a negative advantage; a 1-token one
    (too short: gamma 1); a truncated row masked out entirely; a 9-token one with a tool span.
    """
    gen = torch.Generator().manual_seed(1)
    pad = tokenizer.pad_token_id
    prompt_lens = [5, 7, 3, 4, 6]
    comp_lens = [12, 6, 1, 12, 9]
    width_p, width_c = max(prompt_lens), max(comp_lens)
    prompt_ids = torch.full((5, width_p), pad)
    prompt_mask = torch.zeros(5, width_p, dtype=torch.long)
    completion_ids = torch.full((5, width_c), pad)
    completion_mask = torch.zeros(5, width_c, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_lens, comp_lens)):
        prompt_ids[b, width_p - p :] = torch.randint(10, 2000, (p,), generator=gen)
        prompt_mask[b, width_p - p :] = 1
        completion_ids[b, :c] = torch.randint(10, 2000, (c,), generator=gen)
        completion_mask[b, :c] = 1
    completion_mask[3] = 0  # mask_truncated_completions
    tool_mask = torch.ones(5, width_c, dtype=torch.long)
    tool_mask[4, 3:6] = 0
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "tool_mask": tool_mask,
        "advantages": torch.tensor([0.8, -0.6, 0.5, 1.0, 0.3]),
        "num_items_in_batch": completion_mask.sum(),
    }


def expected_advantages(trainer, batch) -> torch.Tensor:
    """Independent of the trainer's code: one Analyzer call per trace, gamma(), the rule by hand."""
    rc = trainer.rhythm
    policy = trainer.accelerator.unwrap_model(trainer.model)
    analyzer = Analyzer(policy, rc.analysis_config())
    adv = batch["advantages"]
    loss_mask = batch["completion_mask"] * batch["tool_mask"]
    out = adv[:, None].expand(loss_mask.shape).clone()
    for b in range(adv.shape[0]):
        n = int(batch["completion_mask"][b].sum())
        if n < 2 or adv[b] < 0 or rc.strategy == "none":
            continue
        prompt = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist()
        ids = prompt + batch["completion_ids"][b, :n].tolist()
        res = analyzer.analyze([TraceInput(ids, len(prompt))])[0]
        config = rc.credit_config()
        if rc.strategy == "random":
            config = replace(config, seed=sequence_seed(rc.seed, trainer.state.global_step, 0, b))
        g = gamma(
            rc.strategy, waad=res.waad, fai=res.fai, delta=res.delta, entropy=res.entropy, config=config
        )
        for t in range(n):
            if loss_mask[b, t]:
                out[b, t] = adv[b] * float(g[t])
    return out


@pytest.mark.parametrize(("strategy", "selection"), CASES, ids=[f"{s}-{sel}" for s, sel in CASES])
def test_two_step_run_logs_and_shapes(tokenizer, tmp_path, monkeypatch, strategy, selection):
    rhythm = rhythm_config(strategy, selection, batch_size=1)
    trainer = make_trainer(tokenizer, tmp_path, rhythm, cls=RecordingTrainer)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    expected_impl = "sdpa" if strategy == "none" else "attnrhythm"
    assert policy.config._attn_implementation == expected_impl
    trainer.train()
    assert trainer.state.global_step == 2

    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    for entry in steps:
        for key in RHYTHM_KEYS:
            assert key in entry, key
        if strategy == "none":
            assert entry["rhythm/gamma_mean"] == 1.0 and entry["rhythm/amplified_share"] == 0.0
            assert not any(key in entry for key in ROLE_KEYS)
        else:
            assert all(key in entry for key in ROLE_KEYS)
            assert entry["rhythm/gamma_mean"] > 1.0 and 0 < entry["rhythm/amplified_share"] < 1
            assert entry["rhythm/seconds"] > 0 and entry["rhythm/analysed_share"] == 1.0

    # every rollout batch of the run was shaped per the rule
    assert len(trainer.records) == 2
    for before, mask, after in trainer.records:
        check_rule(before, mask, after, strategy)

    # the hook itself, on a stubbed result of GRPOTrainer._generate_and_score_completions
    batch = stub_batch(tokenizer)
    monkeypatch.setattr(
        GRPOTrainer,
        "_generate_and_score_completions",
        lambda self, inputs: {k: v.clone() for k, v in batch.items()},
    )
    if strategy == "none":  # plain GRPO: no credit forward at all
        assert trainer._rhythm_analyzer is None
        monkeypatch.setattr(Analyzer, "analyze", lambda self, traces: pytest.fail("credit forward ran"))
    out = trainer._generate_and_score_completions([])
    if trainer.rhythm_credit_path == "loss":  # num_iterations 1: shaped in the loss forward
        assert out["advantages"].dim() == 1
        trainer.current_gradient_accumulation_steps = 1
        trainer.compute_loss(trainer.model, out)
    shaped = out["advantages"]
    if strategy == "none":
        assert torch.equal(shaped, batch["advantages"])
    else:
        torch.testing.assert_close(shaped, expected_advantages(trainer, batch), rtol=0, atol=1e-6)
        assert torch.equal(shaped[2], batch["advantages"][2].expand(shaped.shape[1]))  # 1 token: gamma 1
        assert torch.equal(shaped[3], batch["advantages"][3].expand(shaped.shape[1]))  # masked row
        assert torch.equal(shaped[4, 3:6], batch["advantages"][4].expand(3))  # tool span
        assert (shaped[0] > batch["advantages"][0]).any()


def test_gamma_norm_and_shape_in_the_hook(tokenizer, tmp_path, monkeypatch):
    """gamma_norm=mean, shape=both: each row's mass over its loss tokens is kept, both signs shaped.

    The stubbed batch's loss mask (completion x tool mask) is narrower than the analysed response on
    row 4, so the gamma of the analysis is renormalised over the loss tokens there.
    """
    batch = stub_batch(tokenizer)
    monkeypatch.setattr(
        GRPOTrainer,
        "_generate_and_score_completions",
        lambda self, inputs: {k: v.clone() for k, v in batch.items()},
    )
    loss = (batch["completion_mask"] * batch["tool_mask"]).bool()
    adv = batch["advantages"][:, None].expand(loss.shape)
    shaped = {}
    for norm, shape in (("none", "positive"), ("mean", "positive"), ("mean", "both"), ("none", "both")):
        rhythm = rhythm_config("coupled", gamma_norm=norm, shape=shape, credit_forward="separate")
        trainer = make_trainer(tokenizer, tmp_path / f"{norm}-{shape}", rhythm)
        out = trainer._generate_and_score_completions([])["advantages"]
        shaped[norm, shape] = out
        assert torch.equal(out[~loss], adv[~loss])  # outside the loss mask: A as it was
        if norm == "mean":
            for b in range(out.shape[0]):  # mass preserved, for either sign
                torch.testing.assert_close(out[b][loss[b]].sum(), adv[b][loss[b]].sum(), rtol=1e-6, atol=1e-6)
    plain = shaped["none", "positive"]
    assert torch.equal(plain[1], adv[1])  # the paper's rule: A < 0 untouched
    assert not torch.equal(shaped["none", "both"][1][loss[1]], adv[1][loss[1]])  # both: shaped too
    gam = plain[0] / adv[0]  # row 0: A > 0, every token in the loss
    torch.testing.assert_close(shaped["mean", "positive"][0], adv[0] * gam / gam.mean(), rtol=1e-6, atol=0)
    # row 1 (A < 0) under both: the same gamma pattern as a positive row would get, negative
    neg = shaped["mean", "both"][1][loss[1]] / adv[1][loss[1]]
    torch.testing.assert_close(neg.mean(), torch.tensor(1.0), rtol=1e-6, atol=1e-6)
    assert (neg > 1).any() and (neg < 1).any()


def test_accumulation_and_reuse_split_token_advantages(tokenizer, tmp_path):
    """One rollout batch of 4 feeds 2 micro-batches, twice (num_iterations=2): (B, T) advantages split."""
    trainer = make_trainer(
        tokenizer,
        tmp_path,
        rhythm_config("global"),
        cls=RecordingTrainer,
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_iterations=2,
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert len(trainer.records) == 1
    before, mask, after = trainer.records[0]
    assert after.dim() == 2 and after.shape[0] == 4
    check_rule(before, mask, after, "global")
    assert "rhythm/gamma_mean" in trainer.state.log_history[0]


def test_checkpoint_and_resume(tokenizer, tmp_path):
    rhythm = rhythm_config("coupled")  # default credit batch size: several traces per forward
    first = make_trainer(tokenizer, tmp_path, rhythm, save_strategy="steps", save_steps=1)
    first.train()
    assert (tmp_path / "checkpoint-2").is_dir()
    resumed = make_trainer(tokenizer, tmp_path, rhythm, save_strategy="steps", save_steps=1, max_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    last = [h for h in resumed.state.log_history if "loss" in h]
    assert last[-1]["step"] == 3
    assert all(key in last[-1] for key in RHYTHM_KEYS + ROLE_KEYS)
    assert (tmp_path / "checkpoint-3").is_dir()


def test_heads_refresh_logs_saves_and_resumes(tokenizer, tmp_path):
    """heads refresh:1: per-sequence classes at step 0, then the corpus set of the previous step's
    rollouts (headsets.corpus_heads); saved with each checkpoint; a resumed run uses the same set."""
    rhythm = rhythm_config("coupled", heads="refresh:1", layers="0,1")
    first = make_trainer(tokenizer, tmp_path, rhythm, save_strategy="steps", save_steps=1)
    assert first.head_refresh is not None and first.head_refresh.heads is None
    first.train()
    refresh = first.head_refresh
    assert refresh.refreshes == 1 and refresh.refreshed_at == 1  # derived before step 1's batch
    assert len(refresh.spans) == 4  # step 1's rollouts, for the next refresh
    logged = [h for h in first.state.log_history if "loss" in h]
    assert [h["rhythm/heads_refreshes"] for h in logged] == [0.0, 1.0]
    assert logged[1]["rhythm/heads_traces"] == 4.0 and "rhythm/heads_changed" not in logged[1]
    # the set in use is the corpus rule on the spans of step 0's rollouts, and the analysis uses it
    layers, classes = refresh.classes()
    assert layers == [0, 1] and len(classes.local) == len(classes.global_) == 2  # round(0.3 * 8)
    assert first._rhythm_analysis_config().heads == classes
    saved = json.loads((tmp_path / "checkpoint-2" / "rhythm_heads.json").read_text())
    assert saved["heads"] == refresh.heads and saved["spans"] == refresh.spans
    assert json.loads((tmp_path / "checkpoint-1" / "rhythm_heads.json").read_text())["refreshes"] == 0

    resumed = make_trainer(tokenizer, tmp_path, rhythm, save_strategy="steps", save_steps=1, max_steps=3)
    seen = []
    refresh_heads = resumed._refresh_heads

    def spy():
        seen.append(resumed.head_refresh.heads)
        refresh_heads()

    resumed._refresh_heads = spy
    resumed.train(resume_from_checkpoint=True)
    assert seen[0] == refresh.heads  # before step 2's refresh: the checkpoint's head set and spans
    assert resumed.head_refresh.refreshes == 2 and resumed.head_refresh.refreshed_at == 2
    last = [h for h in resumed.state.log_history if "loss" in h][-1]
    assert last["step"] == 3 and last["rhythm/heads_refreshes"] == 2.0
    for key in ("rhythm/heads_local_jaccard", "rhythm/heads_global_jaccard"):
        assert 0.0 <= last[key] <= 1.0
    change = head_set_change(refresh.heads, resumed.head_refresh.heads)
    assert last["rhythm/heads_changed"] == change["changed"]


def test_head_set_change_and_heads_option():
    old = {"local": [[0, 0], [0, 1]], "global": [[1, 2], [1, 3]]}
    new = {"local": [[0, 0], [1, 2]], "global": [[1, 3], [0, 3]]}
    # [0,1] local -> none, [1,2] global -> local, [0,3] none -> global
    assert head_set_change(old, new) == {"local_jaccard": 1 / 3, "global_jaccard": 1 / 3, "changed": 3.0}
    assert head_set_change(old, old)["changed"] == 0.0
    assert parse_heads(None).mode == parse_heads("sequence").mode == "sequence"
    assert parse_heads("refresh:20").every == 20 and parse_heads("h.json").path == "h.json"
    for bad in ("refresh:0", "refresh:x", "refresh"):
        with pytest.raises(AttnRhythmError, match="refresh:K"):
            RhythmCreditConfig(heads=bad)


def test_streaming_attention_keeps_generation_and_loss(tokenizer):
    """After the switch to ``attnrhythm`` the model computes what it computed with SDPA."""
    model = tiny_model(tokenizer).eval()
    ids = torch.randint(10, 2000, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        greedy = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    Analyzer(model, rhythm_config("coupled").analysis_config())
    assert model.config._attn_implementation == "attnrhythm"
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits)
        assert torch.equal(
            model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False), greedy
        )
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


def test_images_are_refused(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, rhythm_config("local"))
    batch = stub_batch(tokenizer)
    batch["pixel_values"] = torch.zeros(1, 3, 4, 4)
    with pytest.raises(AttnRhythmError, match="text-only"):
        trainer._apply_rhythm_credit(batch)


def test_config_validation():
    with pytest.raises(AttnRhythmError, match="unknown credit strategy"):
        RhythmCreditConfig(strategy="everything")
    with pytest.raises(AttnRhythmError, match="batch size"):
        RhythmCreditConfig(batch_size=0)
    with pytest.raises(AttnRhythmError, match="selection"):
        RhythmCreditConfig(selection="middle")
    with pytest.raises(AttnRhythmError, match="horizon"):
        RhythmCreditConfig(fai_horizon="9:3")
    with pytest.raises(AttnRhythmError, match="gamma_norm"):
        RhythmCreditConfig(gamma_norm="sum")
    with pytest.raises(AttnRhythmError, match="shape"):
        RhythmCreditConfig(shape="negative")
    assert RhythmCreditConfig(gamma_norm="mean", shape="both").credit_config().shape == "both"
    config = RhythmCreditConfig(strategy="global", fai_horizon="4:end", amp=2.0, layers="0,1")
    assert config.fai_horizon == (4, None)
    assert config.credit_config().amp == 2.0 and config.analysis_config().layers == "0,1"
    with pytest.raises(AttnRhythmError, match="RhythmCreditConfig"):
        RhythmGRPOTrainer(None, rhythm={"strategy": "coupled"})


def test_task_reward_func_reads_dataset_columns():
    task = get_task("countdown")
    example = task.examples(1, seed=3)[0]
    reward = task_reward_func(task)
    good = f"<answer> {example['solution']} </answer>"
    completions = [good, "no answer", [{"role": "assistant", "content": good}]]
    kwargs = {key: [example[key]] * 3 for key in example if key != "prompt"}
    out = reward(prompts=[example["prompt"]] * 3, completions=completions, trainer_state=None, **kwargs)
    assert out == [1.0, 0.0, 1.0]
    assert reward.__name__ == "countdown_reward"
