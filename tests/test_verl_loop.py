"""``rhythm_grpo`` through verl's own training loop on the CPU: Ray, TransferQueue, FSDP2 on 1 and 2 ranks.

tests/verl_loop_run.py builds verl's trainer with its own ``init()`` and runs ``fit()`` for 2 steps:
verl's ``RayWorkerGroup`` over ``RhythmActorRolloutRefWorker`` (role ``actor``), its dataloader,
agent loop manager and workers writing each sample to TransferQueue, its replay buffer,
``_step_once`` (balance with filler rows, old log-probs + credit, advantages, actor update),
metrics and checkpoints. Only rollout generation (vLLM/SGLang, GPU) is replaced: the agent loop
returns written rollouts (tests/verl_written_rollouts.py). Checked on every row of every step:

* gamma, captured in verl's own old-log-prob forward (the default ``credit_forward=auto``; padded
  layout on 1 rank, packed on 2), equals ``rollout_gamma`` of the plain transformers model with the
  weights of that step (the initial files, then the checkpoint verl saved after step 1);
* the shaped advantages equal ``where(A >= 0, gamma A, A)`` of verl's GRPO advantages;
* the ``rhythm/*`` metrics count the real rollouts only (verl's filler rows left out);
* the actor update ran and changed the weights; the mode behaved as verl's sync trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")
import torch  # noqa: E402
from verl_models import tiny_model  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
TIMEOUT_S = 600
PROMPTS = 6  # 2 steps of 3 prompts, 2 rollouts each: 6 rows + 2 filler rows (a multiple of 4)
SETTINGS = dict(strategy="coupled", window=4, fai_horizon="2:12", batch_size=2)
WORKER_ENV = dict(
    VERL_USE_EXTERNAL_MODULES="verl_cpu_platform",
    VERL_PLATFORM="cpu",
    VERL_ENGINE_DEVICE="cuda",
    OMP_NUM_THREADS="1",
    TOKENIZERS_PARALLELISM="false",
    HF_HUB_OFFLINE="1",
    RAY_DEDUP_LOGS="0",
    PYTHONUNBUFFERED="1",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("verl_loop_tiny"))


def write_dataset(path: Path) -> Path:
    import pandas as pd

    rows = [
        dict(
            data_source="written",
            prompt=[{"role": "user", "content": f"w{3 + i} w{4 + i}"}],
            ability="test",
            reward_model={"style": "rule", "ground_truth": "w5"},
            extra_info={"index": i},
        )
        for i in range(PROMPTS)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def overrides(
    model_dir: Path, data: Path, work: Path, world: int, settings: dict | None = None
) -> list[str]:
    mode = "rhythm_grpo"
    settings = SETTINGS if settings is None else settings
    agent_loops = work / "agent_loops.yaml"
    agent_loops.write_text("- name: written\n  _target_: verl_written_rollouts.WrittenRolloutLoop\n")
    return [
        f"trainer.v1.trainer_mode={mode}",
        *(f"+trainer.v1.{mode}.{key}={value}" for key, value in settings.items()),
        "algorithm.adv_estimator=grpo",
        f"data.train_files={data}",
        f"data.val_files={data}",
        "data.train_batch_size=3",
        "data.max_prompt_length=32",
        "data.max_response_length=32",
        "data.filter_overlong_prompts=false",
        "data.dataloader_num_workers=0",
        "data.shuffle=false",
        f"actor_rollout_ref.model.path={model_dir}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        # the credit rides in verl's old-log-prob forward (credit_forward=auto): padded on 1 rank,
        # packed (remove-padding) on 2
        f"actor_rollout_ref.model.use_remove_padding={'true' if world == 2 else 'false'}",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.actor.use_torch_compile=false",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.name=written",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.calculate_log_probs=false",  # written rollouts carry no log-probs
        "actor_rollout_ref.rollout.nnodes=1",  # verl's standalone rollout pool: no replicas start on CPU
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "actor_rollout_ref.rollout.agent.default_agent_loop=written",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loops}",
        "algorithm.use_kl_in_reward=false",
        f"trainer.n_gpus_per_node={world}",
        "trainer.nnodes=1",
        "trainer.logger=[console]",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=1",
        "trainer.total_training_steps=2",
        "trainer.critic_warmup=0",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={work / 'checkpoints'}",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]


def run_loop(
    world: int, model_dir: Path, work: Path, settings: dict | None = None, extra: tuple[str, ...] = ()
) -> dict:
    data = work / "train.parquet"
    spec = dict(
        world=world,
        overrides=[
            *overrides(model_dir, data if data.exists() else write_dataset(data), work, world, settings),
            *extra,
        ],
        worker_env=[*WORKER_ENV, "PYTHONPATH"],
    )
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(
        os.environ,
        **WORKER_ENV,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
    )
    log = work / "loop.log"
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, str(TESTS / "verl_loop_run.py"), str(work / "spec.json"), str(work / "out.pt")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            cwd=work,
        )
    assert done.returncode == 0, f"verl's loop failed:\n{log.read_text()[-6000:]}"
    return torch.load(work / "out.pt", weights_only=False)


def padded(rows: list[torch.Tensor], *, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype)
    for b, row in enumerate(rows):
        if left:
            out[b, width - len(row) :] = row
        else:
            out[b, : len(row)] = row
    return out


def reference(model_path: Path, step: dict, settings: dict | None = None, heads: dict | None = None):
    """rollout_gamma of the plain transformers model on the step's rows, in one process.

    ``heads``: the head set of a ``refresh:K`` run in use at that step (None: per sequence).
    """
    from transformers import AutoModelForCausalLM

    from attnrhythm.analyze import Analyzer
    from attnrhythm.rollout.config import RhythmCreditConfig
    from attnrhythm.rollout.credit import rollout_gamma
    from attnrhythm.rollout.heads import refreshed_config

    settings = RhythmCreditConfig(**(SETTINGS if settings is None else settings))
    plain = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa").eval()
    prompts, responses = step["prompts"], step["responses"]
    prompt_ids = padded(prompts, left=True)
    prompt_mask = padded([torch.ones_like(p) for p in prompts], left=True)
    completion_ids = padded(responses)
    completion_mask = padded([torch.ones_like(r) for r in responses])
    return rollout_gamma(
        Analyzer(plain, refreshed_config(settings.analysis_config(), heads)),
        settings.strategy,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        padded(step["response_mask"]),
        batch_size=settings.batch_size,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("world", [1, 2])
def test_rhythm_grpo_steps_through_verls_loop(world, model_dir, tmp_path):
    from verl_written_rollouts import ONE_TOKEN, TOOL

    from attnrhythm.rollout.credit import COUNT_KEYS, rhythm_metrics

    res = run_loop(world, model_dir, tmp_path)
    record = res["record"]
    assert [step["global_step"] for step in record] == [1, 2]
    checkpoints = tmp_path / "checkpoints"
    models = [model_dir, checkpoints / "global_step_1" / "actor" / "huggingface"]
    seen_cases = set()
    for step, model_path in zip(record, models):
        filler = [bool(tag.get("is_padding", False)) for tag in step["tags"]]
        assert len(filler) == 8 and sum(filler) == 2  # verl padded 6 rollouts to a multiple of 4
        ref = reference(model_path, step)
        rows = zip(step["rhythm_gamma"], step["advantages"], step["shaped"])
        for b, (gamma, adv, shaped) in enumerate(rows):
            n = len(step["responses"][b])
            assert gamma.shape == (n,)
            # captured in verl's forward: the separate analysis' gamma to float32 rounding
            torch.testing.assert_close(gamma, ref.gamma[b, :n], rtol=1e-5, atol=1e-5)
            mask = step["response_mask"][b].bool()
            assert torch.all(gamma[~mask] == 1)  # tool output and filler rows: no credit
            torch.testing.assert_close(shaped, torch.where(adv >= 0, gamma * adv, adv), rtol=0, atol=0)
            if n == 1:
                assert torch.all(gamma == 1)
            if not filler[b] and (~mask).any():
                seen_cases.add("tool")
            if not filler[b] and n == 1:
                seen_cases.add("one_token")
        assert any((g > 1).any() for g in step["rhythm_gamma"])  # the credit is not trivial
        # counts: per row, as rollout_gamma counts; the metrics leave the filler rows out
        counts = torch.stack(step["rhythm_counts"])
        torch.testing.assert_close(counts, ref.row_counts)
        real = torch.tensor([not f for f in filler])
        totals = dict(zip(COUNT_KEYS, counts[real].sum(0).tolist()))
        assert totals["sequences"] == 6
        expected = rhythm_metrics(totals, 0.0)
        for key, value in expected.items():
            if key != "rhythm/seconds":
                assert step["metrics"][key] == pytest.approx(value, abs=1e-6), key
        analysed = sum(1 for b, r in enumerate(step["responses"]) if not filler[b] and len(r) >= 2)
        assert step["metrics"]["rhythm/analysed_share"] == pytest.approx(analysed / 6)
        assert "actor/pg_loss" in step["metrics"]  # verl's actor update ran
        assert step["metrics"]["rhythm/fused"] == 1.0  # from verl's own old-log-prob forward
    assert seen_cases == {"tool", "one_token"} and ONE_TOKEN[0] < 3 and min(i for i, _ in TOOL) < 3
    # the actor update changed the weights, step after step
    final = checkpoints / "global_step_2" / "actor" / "huggingface"
    initial, after1, after2 = (weights(path) for path in (model_dir, models[1], final))
    for before, after in ((initial, after1), (after1, after2)):
        assert any(not torch.equal(before[k], after[k]) for k in before)
    # verl's sync trainer on every point decided by the mode's name
    assert res["trainer_mode"] == ("sync", "rhythm_grpo")
    assert res["replay_buffer"] == "ReplayBuffer"  # failed groups kept, not evicted and refilled
    assert res["gen_batch_size"] is None  # not forced to 1 as for the async modes
    assert not (checkpoints / "global_step_2" / "transfer_queue").exists()  # no TransferQueue state saved


def test_head_sets_follow_training_in_verls_loop_and_resume(model_dir, tmp_path):
    """``heads=refresh:1``: step 1 classes heads per sequence, step 2 uses the corpus head set of
    step 1's rollouts, saved with each checkpoint; a resumed run (verl's ``resume_mode=auto``)
    restores it and refreshes from the restored spans of step 2 before step 3."""
    from attnrhythm.headsets import corpus_heads
    from attnrhythm.rollout.config import RhythmCreditConfig

    settings = dict(SETTINGS, heads="refresh:1")
    quantile = RhythmCreditConfig(**settings).analysis_config().head_quantile
    first = run_loop(1, model_dir, tmp_path, settings)["record"]
    resumed = run_loop(
        1, model_dir, tmp_path, settings, ("trainer.resume_mode=auto", "trainer.total_training_steps=3")
    )["record"]
    assert [s["global_step"] for s in first] == [1, 2] and [s["global_step"] for s in resumed] == [3]
    checkpoints = tmp_path / "checkpoints"
    models = [model_dir, *(checkpoints / f"global_step_{k}" / "actor" / "huggingface" for k in (1, 2))]
    expected, corpus_size = None, 0
    for k, (step, model_path) in enumerate(zip([*first, *resumed], models)):
        assert step["refreshes"] == k
        if expected is None:
            assert step["heads"] is None  # step 1: classes per sequence
        else:
            for key in ("layers", "local", "global", "traces", "source"):
                assert step["heads"][key] == expected[key], key
            assert step["metrics"]["rhythm/heads_traces"] == corpus_size
        ref = reference(model_path, step, settings, heads=step["heads"])
        for b, gamma in enumerate(step["rhythm_gamma"]):
            torch.testing.assert_close(gamma, ref.gamma[b, : len(gamma)], rtol=0, atol=0)
        # the corpus of the next refresh: the analysed real rollouts of this step
        real = {b for b, tag in enumerate(step["tags"]) if not tag.get("is_padding", False)}
        spans = [span for b, span in zip(ref.span_rows, ref.spans) if b in real]
        layers = json.loads((checkpoints / "global_step_1" / "rhythm_heads.json").read_text())["layers"]
        records = [{"layers": layers, "heads": {"distance": s.tolist()}} for s in spans]
        expected = corpus_heads(records, quantile, source=f"rollouts of steps {k}-{k}")
        corpus_size = len(spans)
    saved = json.loads((checkpoints / "global_step_2" / "rhythm_heads.json").read_text())
    assert saved["refreshes"] == 1 and saved["refreshed_at"] == 1 and len(saved["spans"]) > 0
