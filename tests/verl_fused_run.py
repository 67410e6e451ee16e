"""One rank of the fused-credit test (tests/test_verl_fused.py starts it once per rank).

Builds verl's actor worker (``RhythmActorRolloutRefWorker``, role ``actor``, FSDP2 on gloo, the CPU
platform of tests/verl_cpu_platform.py) as tests/verl_engine_run.py does, on this rank's rows (tool
spans, 1-token responses) plus two of verl's own filler rows
(``construct_minimal_padding_template``), then for each of verl's forward layouts (``CASES``:
packed/remove-padding or padded, micro-batches, dynamic batch size) calls ``compute_log_prob``:

* plain (no credit settings): verl's log-probs;
* with the credit settings (``credit_forward=fused``): log-probs, gamma, counts and the fused flag;

and once ``compute_rhythm_credit`` (the separate forward). Then the ``entropy`` strategy, which
verl's forward cannot carry: ``auto`` (falls back to the separate forward) and ``fused`` (fails);
and ``auto`` where one rank's forward holds tokens that are not its rows' prompt + response.
Usage as tests/verl_engine_run.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, replace

import torch
import torch.distributed as dist
from verl_engine_run import SETTINGS, compose_config, rollout_rows

# the non-tensor keys verl's infer_batch reads per call (defaults from the worker's config)
CASES = {
    "packed": dict(use_remove_padding=True, use_dynamic_bsz=False, micro_batch_size_per_gpu=2),
    "padded": dict(use_remove_padding=False, use_dynamic_bsz=False, micro_batch_size_per_gpu=2),
    "packed_one_micro_batch": dict(
        use_remove_padding=True, use_dynamic_bsz=False, micro_batch_size_per_gpu=6
    ),
    "packed_dynamic": dict(use_remove_padding=True, use_dynamic_bsz=True, max_token_len_per_gpu=140),
    "padded_dynamic": dict(use_remove_padding=False, use_dynamic_bsz=True, max_token_len_per_gpu=140),
}
EOS = 1


def with_filler(rows: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The rows plus two filler rows built by verl's own padding utility (the trainer's)."""
    from verl.trainer.ppo.padding_utils import construct_minimal_padding_template

    filler, _ = construct_minimal_padding_template(dict(rows[0]), {}, EOS)
    keep = set(rows[0])
    filler = {k: v for k, v in filler.items() if k in keep}
    return [*rows, filler, {k: v.clone() for k, v in filler.items()}]


def main(model_dir: str, out_file: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    from verl.utils import tensordict_utils as tu

    from attnrhythm.errors import AttnRhythmError
    from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker
    from attnrhythm.rollout.config import RhythmCreditConfig

    settings = RhythmCreditConfig(**SETTINGS, credit_forward="fused")
    worker = RhythmActorRolloutRefWorker(config=compose_config(model_dir).actor_rollout_ref, role="actor")
    worker.init_model()
    rows = with_filler(rollout_rows(rank, 97))

    def batch(case: dict, credit: bool, use: RhythmCreditConfig = settings, samples=rows):
        td = tu.list_of_dict_to_tensordict([dict(r) for r in samples])
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False, temperature=1.0, **case)
        if credit:
            tu.assign_non_tensor(td, rhythm_credit=asdict(use), rhythm_step=3)
        return td

    out = {"response_lengths": [len(r["responses"]) for r in rows], "cases": {}}
    separate = worker.compute_rhythm_credit(batch(CASES["packed"], credit=True))
    out["separate"] = dict(
        gamma=[g.clone() for g in separate["rhythm_gamma"].unbind()],
        counts=separate["rhythm_counts"].clone(),
        fused=separate["rhythm_fused"].clone(),
    )
    for name, case in CASES.items():
        plain = worker.compute_log_prob(batch(case, credit=False))
        fused = worker.compute_log_prob(batch(case, credit=True))
        out["cases"][name] = dict(
            log_probs_plain=[x.clone() for x in plain["log_probs"].unbind()],
            log_probs=[x.clone() for x in fused["log_probs"].unbind()],
            gamma=[g.clone() for g in fused["rhythm_gamma"].unbind()],
            counts=fused["rhythm_counts"].clone(),
            fused=fused["rhythm_fused"].clone(),
        )
    # the entropy strategy cannot ride in verl's forward: auto falls back, fused says why
    entropy = RhythmCreditConfig(**{**SETTINGS, "strategy": "entropy"})
    fallback = worker.compute_log_prob(batch(CASES["packed"], credit=True, use=entropy))
    reference = worker.compute_rhythm_credit(batch(CASES["packed"], credit=True, use=entropy))
    out["entropy_auto"] = dict(
        gamma=[g.clone() for g in fallback["rhythm_gamma"].unbind()],
        reference=[g.clone() for g in reference["rhythm_gamma"].unbind()],
        fused=fallback["rhythm_fused"].clone(),
    )
    try:
        strict = replace(entropy, credit_forward="fused")
        worker.compute_log_prob(batch(CASES["packed"], credit=True, use=strict))
    except AttnRhythmError as error:
        out["entropy_fused_error"] = str(error)
    # a forward whose tokens are not the batch's prompt + response (rank 0's first row): auto
    # falls back to the separate forward on every rank (the others learn it from rank 0)
    odd = [dict(r) for r in rows]
    if rank == 0:
        odd[0]["input_ids"] = odd[0]["input_ids"].flip(0)
    auto = replace(settings, credit_forward="auto")
    unmatched = worker.compute_log_prob(batch(CASES["padded"], credit=True, use=auto, samples=odd))
    out["unmatched_auto"] = dict(
        gamma=[g.clone() for g in unmatched["rhythm_gamma"].unbind()], fused=unmatched["rhythm_fused"].clone()
    )
    out["attn"] = worker.actor.engine.module.config._attn_implementation
    torch.save(out, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
