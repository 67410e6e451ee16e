"""Data-parallel ``attnrhythm analyze`` under ``torchrun`` / ``accelerate launch``.

Every rank reads the whole input, plans the same batches (:func:`attnrhythm.runner.plan_batches`:
by length, from the whole input) and takes its share of them, balanced by token count (the
heaviest batch to the least loaded rank). Each rank writes its records to its own resumable part
``OUT.parts/part-RRRRR.jsonl``; after a barrier rank 0 merges every part into ``OUT`` in input
order and removes the parts. A rank that dies leaves the others' parts intact; a rerun (with any
number of ranks) skips every record already in ``OUT`` or in a part and runs only the batches
that still miss records. Since a batch is the same in every run, the merged records equal a
single-process run's (on the same kind of device and thread count).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from attnrhythm.analyze import AnalysisConfig, Analyzer
from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import InputItem, ResumableWriter, iter_jsonl, part_files, write_ordered
from attnrhythm.runner import (
    GenerationConfig,
    RunSummary,
    analyze_items,
    batch_tokens,
    plan_batches,
    prepare,
    run_batches,
)

#: how long a rank that finished waits at the barrier for the others (a resumed rank may run long)
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` of the environment
    (set by torchrun and accelerate launch; 1, 0, 0 for a plain process)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Launch:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise AttnRhythmError(
                "WORLD_SIZE, RANK and LOCAL_RANK must be integers: launch with torchrun or accelerate launch"
            ) from None
        if world < 1 or not 0 <= rank < world:
            raise AttnRhythmError(f"RANK {rank} is outside WORLD_SIZE {world}: check the launcher's settings")
        return cls(world, rank, local)

    def device(self, device: str) -> str:
        """One device per rank: ``cuda:LOCAL_RANK`` for a CUDA device, else ``device`` as given."""
        if self.world > 1 and device.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return device


def assign(costs: list[int], world: int) -> list[list[int]]:
    """Batch indices per rank: the costliest batch goes to the least loaded rank (ties: lower index,
    lower rank); each rank's list runs costliest first."""
    loads = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += costs[i]
    return shares


def parts_dir(out: Path) -> Path:
    """The directory of the per-rank parts of ``out``."""
    return out.with_name(out.name + ".parts")


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def analyze_ranks(
    items: list[InputItem],
    model: Any,
    tokenizer: Any,
    config: AnalysisConfig,
    *,
    out: Path,
    launch: Launch,
    batch_size: int = 4,
    chat: bool = True,
    generation: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """This rank's share of the analysis into its part; on rank 0, the merge into ``out``."""
    generation = generation or GenerationConfig()
    analyzer = Analyzer(model, config)
    errors: list[str] = []
    max_len = analyzer.max_len
    work = prepare(items, tokenizer, chat=chat, generation=generation, max_len=max_len, errors=errors)
    batches = plan_batches(work, batch_size)
    mine = [batches[i] for i in assign([batch_tokens(b) for b in batches], launch.world)[launch.rank]]
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"part-{launch.rank:05d}.jsonl"
    summary = RunSummary(out=part, errors=errors if launch.rank == 0 else [])
    own = {part, _partial(part)}
    elsewhere = {
        str(r["key"])
        for source in [out, _partial(out), *(p for p in part_files(parts) if p not in own)]
        for r in iter_jsonl(source)
        if "key" in r
    }
    with ResumableWriter(part) as writer:
        summary.resumed = writer.resumed + len(elsewhere)
        run_batches(
            mine,
            analyzer,
            tokenizer,
            writer,
            summary,
            chat=chat,
            generation=generation,
            done_elsewhere=elsewhere,
            on_progress=on_progress,
        )
    _barrier(launch, next(model.parameters()).device)
    if launch.rank == 0:
        order = [w.item.key for w in work]
        summary.merged = write_ordered([out, _partial(out), *part_files(parts)], out, order)
        shutil.rmtree(parts)
        _partial(out).unlink(missing_ok=True)
        summary.out = out
    return summary


def _barrier(launch: Launch, device: Any) -> None:
    """Wait for every rank (torch.distributed: the group already there, else one made from the
    launcher's environment: NCCL when this rank has a CUDA device, else gloo)."""
    if launch.world == 1:
        return
    import torch
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise AttnRhythmError(
                f"WORLD_SIZE is {launch.world} but MASTER_ADDR is not set: launch with torchrun or "
                "accelerate launch"
            )
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        created = True
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
    if created:
        dist.destroy_process_group()


def run_analyze(
    items: list[InputItem],
    *,
    model: str,
    device: str,
    load: Callable[[str, str], tuple[Any, Any]],
    config: AnalysisConfig,
    out: Path,
    batch_size: int = 4,
    chat: bool = True,
    generation: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """``attnrhythm analyze --input``: one process, or this rank's share of a torchrun/accelerate
    launch (also a plain rerun that finds the parts of a killed launch finishes them)."""
    launch = Launch.from_env()
    device = launch.device(device)
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device)
    lm, tokenizer = load(model, device)
    kwargs = dict(batch_size=batch_size, chat=chat, generation=generation, on_progress=on_progress)
    if launch.world > 1 or parts_dir(out).is_dir():
        return analyze_ranks(items, lm, tokenizer, config, out=out, launch=launch, **kwargs)
    return analyze_items(items, lm, tokenizer, config, out=out, **kwargs)
