"""One rank of the verl engine test (tests/test_verl_engine.py starts it once per rank).

Builds verl 0.9.1's actor worker (``RhythmActorRolloutRefWorker``, role ``actor``) with its FSDP2
engine on the CPU (platform: tests/verl_cpu_platform.py, gloo, fp32 mixed precision), then on this
rank's slice of a rollout batch:

* old log-probs from verl (``compute_log_prob``), the rhythm credit from the worker in the
  no-padding (nested) and the padded layout, and the log-probs again;
* the reference: ``rollout_gamma`` with the plain transformers model loaded from the same files.

Usage: ``python verl_engine_run.py MODEL_DIR OUT_FILE`` with RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT set and the environment prepared by the test (VERL_* variables, PYTHONPATH).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

# (prompt length, response length, tool span inside the response or None) per rank; rank 1 has
# two 1-token responses (not analysed), so with batch_size=2 it runs 1 credit forward, rank 0 runs 2
ROWS = {
    0: [(5, 19, None), (7, 14, (4, 8)), (3, 22, None), (6, 17, None)],
    1: [(4, 1, None), (8, 21, None), (5, 16, (2, 5)), (3, 1, None)],
}
SETTINGS = dict(strategy="coupled", window=4, fai_horizon="2:12", batch_size=2)


def rollout_rows(rank: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1000 + rank)
    rows = []
    for plen, rlen, tool in ROWS[rank]:
        prompt = torch.randint(3, vocab, (plen,), generator=gen)
        response = torch.randint(3, vocab, (rlen,), generator=gen)
        mask = torch.ones(rlen, dtype=torch.int64)
        if tool is not None:
            mask[tool[0] : tool[1]] = 0  # tool output: in the context, outside the loss
        rows.append(row_fields(prompt, response, mask))
    return rows


def row_fields(prompt: torch.Tensor, response: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """One sample as verl's agent loop writes it (no-padding layout): prompt + response."""
    ids = torch.cat([prompt, response])
    return dict(
        prompts=prompt,
        responses=response,
        input_ids=ids,
        position_ids=torch.arange(len(ids)),
        attention_mask=torch.ones(len(ids), dtype=torch.int64),
        response_mask=mask,
        loss_mask=mask,
    )


def padded_batch(rows: list[dict[str, torch.Tensor]]):
    """The same rows in verl's padded layout: prompts left-padded, responses right-padded."""
    from tensordict import TensorDict

    width_p = max(len(r["prompts"]) for r in rows)
    width_r = max(len(r["responses"]) for r in rows)
    prompts = torch.zeros(len(rows), width_p, dtype=torch.int64)
    responses = torch.zeros(len(rows), width_r, dtype=torch.int64)
    attention = torch.zeros(len(rows), width_p + width_r, dtype=torch.int64)
    response_mask = torch.zeros(len(rows), width_r, dtype=torch.int64)
    for b, r in enumerate(rows):
        p, n = len(r["prompts"]), len(r["responses"])
        prompts[b, width_p - p :] = r["prompts"]
        responses[b, :n] = r["responses"]
        attention[b, width_p - p : width_p + n] = 1
        response_mask[b, :n] = r["response_mask"]
    return TensorDict(
        dict(prompts=prompts, responses=responses, attention_mask=attention, response_mask=response_mask),
        batch_size=[len(rows)],
    )


def compose_config(model_dir: str):
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                "actor_rollout_ref.model.enable_gradient_checkpointing=false",
                "actor_rollout_ref.actor.strategy=fsdp2",
                "actor_rollout_ref.actor.fsdp_config.forward_only=false",
                "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
                "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
                "actor_rollout_ref.actor.use_torch_compile=false",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
            ],
        )


def main(model_dir: str, out_file: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    from transformers import AutoModelForCausalLM
    from verl.utils import tensordict_utils as tu

    from attnrhythm.analyze import Analyzer
    from attnrhythm.integrations.verl.layout import padded_rollout
    from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker
    from attnrhythm.rollout.credit import rollout_gamma
    from attnrhythm.train.config import RhythmCreditConfig

    settings = RhythmCreditConfig(**SETTINGS)
    worker = RhythmActorRolloutRefWorker(config=compose_config(model_dir).actor_rollout_ref, role="actor")
    worker.init_model()
    engine = worker.actor.engine
    from torch.distributed.fsdp import FSDPModule

    assert type(engine).__name__ == "FSDPEngineWithLMHead" and isinstance(engine.module, FSDPModule)
    attn_before = engine.module.config._attn_implementation

    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    rows = rollout_rows(rank, plain.config.vocab_size)

    def log_probs():
        td = tu.list_of_dict_to_tensordict(rows)
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False, temperature=1.0)
        return worker.compute_log_prob(td)["log_probs"].values().clone()

    def credit(td):
        tu.assign_non_tensor(td, rhythm_credit=asdict(settings), rhythm_step=3)
        return worker.compute_rhythm_credit(td)

    before = log_probs()
    nested = credit(tu.list_of_dict_to_tensordict(rows))
    after = log_probs()
    padded_td = padded_batch(rows)
    padded = credit(padded_td.clone())

    grid = padded_rollout(padded_td)
    reference = rollout_gamma(
        Analyzer(plain, settings.analysis_config()),
        settings.strategy,
        grid.prompt_ids,
        grid.prompt_mask,
        grid.completion_ids,
        grid.completion_mask,
        grid.loss_mask,
        batch_size=settings.batch_size,
        seed_base=(3, rank),
    )
    torch.save(
        dict(
            gamma_nested=[g.clone() for g in nested["rhythm_gamma"].unbind()],
            gamma_padded=padded["rhythm_gamma"].clone(),
            counts_nested=nested["rhythm_counts"].clone(),
            counts_padded=padded["rhythm_counts"].clone(),
            reference=reference.gamma.clone(),
            reference_counts=reference.counts,
            response_lengths=[len(r["responses"]) for r in rows],
            log_probs_before=before,
            log_probs_after=after,
            attn=(attn_before, engine.module.config._attn_implementation),
        ),
        out_file,
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
