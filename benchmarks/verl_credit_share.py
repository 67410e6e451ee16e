"""The rhythm credit's share of a verl step on CPU, 2 gloo ranks: separate credit forward vs fused.

Starts ``--world`` ranks (default 2), each a process holding verl's actor worker
(``RhythmActorRolloutRefWorker``, FSDP2 on gloo, the test CPU platform tests/verl_cpu_platform.py)
over a random Llama (``--layers``, ``--hidden``, ``--vocab``) and ``--rows`` random rollouts per
rank (prompts of about ``--prompt`` tokens, responses of ``--response`` tokens and up to a
quarter fewer). Per round (``--repeats``, the
best kept; the rounds interleave the routes so a slow spell of a shared machine hits them alike),
every rank times, in verl's own calls:

* ``log-prob``: ``compute_log_prob`` without credit (verl's old-log-prob forward);
* ``fused``: ``compute_log_prob`` with the credit captured in that forward (``credit_forward=fused``);
* ``separate``: ``compute_rhythm_credit``, the separate credit forward (``credit_forward=separate``);
* ``update``: ``update_actor`` on the batch (forward, backward, optimizer step).

A step is here old-log-prob forward + credit + actor update (rollout generation, reward and
advantages left out: they do not depend on the route). The credit's cost is ``separate`` for the
separate route and ``fused - log-prob`` for the fused one; the share is that cost over the step.
Times are the max over ranks. ``--layout packed|padded`` picks verl's ``use_remove_padding``.

    python benchmarks/verl_credit_share.py                      # 2 ranks, packed layout
    python benchmarks/verl_credit_share.py --layout padded
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SETTINGS = dict(strategy="coupled")


def _model(path: Path, args: argparse.Namespace) -> None:
    sys.path[:0] = [str(TESTS)]
    from tiny_llama import tiny_llama
    from verl_models import tiny_model

    tiny_model(path)  # the tokenizer and chat template verl's model config loads
    tiny_llama(
        0,
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ).save_pretrained(path)


def _rank(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    from verl.utils import tensordict_utils as tu
    from verl_engine_run import compose_config, row_fields

    from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker
    from attnrhythm.rollout.config import RhythmCreditConfig

    config = compose_config(args.model).actor_rollout_ref
    config.model.use_remove_padding = args.layout == "packed"
    config.actor.ppo_mini_batch_size = args.rows * args.world
    config.actor.ppo_micro_batch_size_per_gpu = args.micro
    config.rollout.log_prob_micro_batch_size_per_gpu = args.micro
    worker = RhythmActorRolloutRefWorker(config=config, role="actor")
    worker.init_model()
    gen = torch.Generator().manual_seed(rank)
    rows = []
    for i in range(args.rows):  # lengths differ by row (verl's no-padding layout is jagged)
        n = args.response - (i * 7) % max(1, args.response // 4)
        prompt = torch.randint(3, args.vocab, (args.prompt - i % 3,), generator=gen)
        response = torch.randint(3, args.vocab, (n,), generator=gen)
        row = row_fields(prompt, response, torch.ones(n, dtype=torch.int64))
        row.update(old_log_probs=torch.zeros(n), advantages=torch.randn(n, generator=gen))
        rows.append(row)

    def batch(**meta):
        td = tu.list_of_dict_to_tensordict([dict(r) for r in rows])
        defaults = dict(calculate_entropy=True, compute_loss=False, temperature=1.0)
        tu.assign_non_tensor(td, **{**defaults, **meta})
        return td

    credit = dict(rhythm_credit=asdict(RhythmCreditConfig(**SETTINGS, credit_forward="fused")), rhythm_step=1)
    update_meta = dict(
        global_batch_size=args.rows * args.world,
        mini_batch_size=args.rows * args.world,
        epochs=1,
        seed=1,
        dataloader_kwargs={"shuffle": False},
        calculate_entropy=False,
    )
    calls = {
        "log-prob": lambda: worker.compute_log_prob(batch()),
        "fused": lambda: worker.compute_log_prob(batch(**credit)),
        "separate": lambda: worker.compute_rhythm_credit(batch(**credit)),
        "update": lambda: worker.update_actor(batch(**update_meta)),
    }
    for call in calls.values():  # warm-up
        call()
    best = {name: float("inf") for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            dist.barrier()
            started = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - started)
    times = torch.tensor([best[name] for name in calls], dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    if rank == 0:
        Path(args.out).write_text(json.dumps(dict(zip(calls, times.tolist()))))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--layout", choices=("packed", "padded"), default="packed")
    parser.add_argument("--rows", type=int, default=8, help="rollouts per rank")
    parser.add_argument("--micro", type=int, default=4, help="log-prob and update micro-batch per rank")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=448)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        _rank(args)
        return
    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "model"
        _model(model, args)
        out = Path(work) / "times.json"
        port = str(_free_port())
        env = dict(
            os.environ,
            WORLD_SIZE=str(args.world),
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            VERL_USE_EXTERNAL_MODULES="verl_cpu_platform",
            VERL_PLATFORM="cpu",
            VERL_ENGINE_DEVICE="cuda",
            OMP_NUM_THREADS=str(args.threads),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        )
        cmd = [sys.executable, __file__, "--rank", "--model", str(model), "--out", str(out)]
        cmd += sys.argv[1:]
        procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r))) for r in range(args.world)]
        if any(proc.wait() for proc in procs):
            raise SystemExit("a rank failed (see its output above)")
        t = json.loads(out.read_text())
    separate_step = t["log-prob"] + t["separate"] + t["update"]
    fused_cost = max(t["fused"] - t["log-prob"], 0.0)
    fused_step = t["fused"] + t["update"]
    print(
        f"verl actor, {args.world} CPU ranks, {args.layout} layout, {args.rows} x ({args.prompt} + "
        f"{args.response}) tokens per rank, Llama {args.layers} x {args.hidden}, vocab {args.vocab}"
    )
    print(f"| call | s (best of {args.repeats}, max over ranks) |")
    print("|------|------|")
    for name, value in t.items():
        print(f"| {name} | {value:.3f} |")
    print()
    print("| route | credit s | step s | credit share |")
    print("|-------|----------|--------|--------------|")
    print(f"| separate | {t['separate']:.3f} | {separate_step:.3f} | {t['separate'] / separate_step:.1%} |")
    print(f"| fused | {fused_cost:.3f} | {fused_step:.3f} | {fused_cost / fused_step:.1%} |")


if __name__ == "__main__":
    main()
