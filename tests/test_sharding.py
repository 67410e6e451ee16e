"""FSDP2: the analysis of a model sharded with ``fully_shard`` equals the unsharded model's.

Two gloo ranks on CPU (``torch.multiprocessing``); each shards the same tiny random Llama
(decoder layers, then the root) and analyses its own batch, with nothing done by the caller.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("torch.distributed.fsdp")
from tiny_llama import tiny_llama  # noqa: E402
from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: E402

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput  # noqa: E402
from attnrhythm.attention.sharding import (  # noqa: E402
    agreed_count,
    bypassed_fsdp_modules,
    full_parameters,
    is_partitioned,
    is_sharded,
)

WORLD = 2


def _tiny_llama(seed: int = 0, tie: bool = False):
    return tiny_llama(seed, tie_word_embeddings=tie, pad_token_id=0)


def _traces(rank: int) -> list[TraceInput]:
    gen = torch.Generator().manual_seed(100 + rank)
    out = []
    for length, start in [(40, 9), (33, 5), (57, 20)][: 2 + rank]:  # uneven sizes across ranks
        ids = torch.randint(1, 97, (length,), generator=gen).tolist()
        out.append(TraceInput(ids, start))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tie: bool, own_head: bool, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        config = AnalysisConfig(fai_horizon="2:12", window=4)
        traces = _traces(rank)
        plain = Analyzer(_tiny_llama(tie=tie), config).analyze(traces)
        model = _tiny_llama(tie=tie)
        for layer in model.model.layers:
            fully_shard(layer)
        if own_head:  # like verl: embeddings and LM head sharded as modules of their own
            fully_shard(model.model.embed_tokens)
            fully_shard(model.lm_head)
        fully_shard(model)
        assert is_sharded(model) and bypassed_fsdp_modules(model) == [model]
        sharded = Analyzer(model, config).analyze(traces)
        # the root is resharded afterwards: its parameters are DTensor shards again
        from torch.distributed.tensor import DTensor

        assert isinstance(model.model.embed_tokens.weight, DTensor)
        assert isinstance(model.lm_head.weight, DTensor)
        torch.save(
            {
                "plain": [(r.waad, r.fai, r.entropy, r.gamma["coupled"], r.distance) for r in plain],
                "sharded": [(r.waad, r.fai, r.entropy, r.gamma["coupled"], r.distance) for r in sharded],
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tie,own_head", [(False, False), (True, False), (False, True)])
def test_fsdp2_analysis_equals_unsharded(tmp_path, tie, own_head):
    # the ranks analyse 2 and 3 traces: with a separately sharded LM head, the head's gathers must
    # not depend on the number of traces (or the ranks would hang)
    mp.start_processes(
        _worker, args=(_free_port(), tie, own_head, str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(got["plain"]) == len(got["sharded"]) == 2 + rank
        for plain, sharded in zip(got["plain"], got["sharded"]):
            for a, b in zip(plain, sharded):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_full_parameters_is_a_no_op_without_fsdp():
    model = _tiny_llama()
    assert not is_sharded(model) and bypassed_fsdp_modules(model) == []
    with full_parameters(model) as same:
        assert same is model
    assert not isinstance(model, FSDPModule)


# -- the credit forward on an FSDP2 model: uneven batches, same number of forwards per rank ----------


def _rollouts(rank: int) -> dict[str, torch.Tensor]:
    """TRL's layout (left-padded prompts, right-padded completions); rank 0: 2 analysable rows
    (1 chunk of 2), rank 1: 5 rows, one too short (2 chunks of 2) -- uneven on purpose."""
    gen = torch.Generator().manual_seed(7 + rank)
    prompt_lens, comp_lens = ([4, 6], [9, 5]) if rank == 0 else ([3, 5, 7, 4, 6], [11, 1, 6, 8, 10])
    bsz, width_p, width_c = len(prompt_lens), max(prompt_lens), max(comp_lens)
    batch = {
        "prompt_ids": torch.zeros(bsz, width_p, dtype=torch.long),
        "prompt_mask": torch.zeros(bsz, width_p, dtype=torch.long),
        "completion_ids": torch.zeros(bsz, width_c, dtype=torch.long),
        "completion_mask": torch.zeros(bsz, width_c, dtype=torch.long),
    }
    for b, (p, c) in enumerate(zip(prompt_lens, comp_lens)):
        batch["prompt_ids"][b, width_p - p :] = torch.randint(1, 97, (p,), generator=gen)
        batch["prompt_mask"][b, width_p - p :] = 1
        batch["completion_ids"][b, :c] = torch.randint(1, 97, (c,), generator=gen)
        batch["completion_mask"][b, :c] = 1
    return batch


def _credit_worker(rank: int, port: int, out_dir: str) -> None:
    from datetime import timedelta

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    # a short timeout: a rank waiting for a forward the other never runs fails instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        from attnrhythm.rollout.credit import capturing_rollout, credit_from_results, rollout_gamma
        from attnrhythm.train import RhythmCreditConfig

        rhythm = RhythmCreditConfig(strategy="coupled", fai_horizon=(2, 8), window=4, batch_size=2)
        batch = _rollouts(rank)
        keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
        plain = rollout_gamma(
            Analyzer(_tiny_llama(), rhythm.analysis_config()), "coupled", *(batch[k] for k in keys)
        )
        model = _tiny_llama()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        analyzer = Analyzer(model, rhythm.analysis_config())
        forwards = []
        analyze = analyzer.analyze
        analyzer.analyze = lambda traces: forwards.append(len(traces)) or analyze(traces)
        sharded = rollout_gamma(analyzer, "coupled", *(batch[k] for k in keys), batch_size=2)

        # the fused capture inside a full forward of the sharded model (FSDP2's own hooks gather)
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with (
            torch.no_grad(),
            capturing_rollout(analyzer, ids, mask, batch["completion_ids"].shape[1]) as found,
        ):
            model(input_ids=ids, attention_mask=mask)
        fused = credit_from_results(
            rhythm.credit_config(),
            "coupled",
            found.results,
            batch["completion_ids"],
            batch["completion_mask"],
        )

        # the trainer's own credit step (_unwrapped_policy: TRL's unwrap + FSDP1-only summon) on this
        # FSDP2 model; the trainer is not constructed (accelerate runs FSDP on GPUs only), its state is set
        from collections import defaultdict
        from types import SimpleNamespace

        from accelerate import Accelerator
        from trl.distributed import DistributedBackend

        from attnrhythm.train.credit_trainer import RhythmGRPOTrainer

        trainer = object.__new__(RhythmGRPOTrainer)
        trainer.rhythm = rhythm
        trainer.model = trainer.model_wrapped = model
        trainer.accelerator = Accelerator(cpu=True)
        trainer.args = SimpleNamespace(ds3_gather_for_generation=True, gradient_checkpointing_kwargs=None)
        trainer.state = SimpleNamespace(global_step=0)
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer._rhythm_analyzer = analyzer
        trainer._rhythm_fused_batch = None
        trainer.head_refresh = None  # heads: sequence (no refresh:K)
        trainer._dist = DistributedBackend(trainer.accelerator)
        advantages = torch.linspace(-1, 1, batch["completion_ids"].shape[0])
        output = trainer._apply_rhythm_credit({**batch, "advantages": advantages.clone()})
        torch.save(
            {
                "plain": plain.gamma,
                "sharded": sharded.gamma,
                "fused": fused.gamma,
                "forwards": forwards,
                "trainer": output["advantages"],
                "advantages": advantages,
                "metrics": {k: v[0] for k, v in trainer._metrics["train"].items()},
            },
            os.path.join(out_dir, f"credit{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_fsdp2_credit_uneven_batches(tmp_path):
    pytest.importorskip("trl")
    mp.start_processes(_credit_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    got = [torch.load(tmp_path / f"credit{rank}.pt") for rank in range(WORLD)]
    # rank 0 has one chunk of real sequences, rank 1 two (and again two in the trainer's step): padded
    assert [len(g["forwards"]) for g in got] == [2 + 2, 2 + 2]
    assert got[0]["forwards"][1] == 1 and got[0]["forwards"][3] == 1  # the dummy trace
    metrics = [g["metrics"] for g in got]
    assert metrics[0] == metrics[1]  # gathered over ranks
    for g in got:
        assert torch.equal(g["sharded"], g["plain"]) and torch.equal(g["fused"], g["plain"])
        assert (g["plain"] > 1).any()
        adv = g["advantages"][:, None].expand_as(g["plain"])
        expected = torch.where(adv >= 0, adv * g["plain"], adv)
        torch.testing.assert_close(g["trainer"], expected, rtol=0, atol=0)


def test_agreed_count_without_a_process_group():
    model = _tiny_llama()
    assert not dist.is_initialized()
    assert agreed_count(3, model) == 3  # no communication outside a process group
    next(model.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 marks its parameters with
    assert is_partitioned(model) and not is_sharded(model)
