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
from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: E402

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput  # noqa: E402
from attnrhythm.sharding import bypassed_fsdp_modules, full_parameters, is_sharded  # noqa: E402

WORLD = 2


def _tiny_llama(seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


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
