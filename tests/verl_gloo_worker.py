"""The plugin's actor worker on plain gloo, for the CPU tests that run verl's Ray worker groups.

verl's workers open their process group with the backend string ``cpu:gloo,<device>:<backend>``,
which torch refuses when the device is the CPU itself ("Duplicate device type cpu"). This worker
opens a plain gloo group first (verl then finds one and keeps it); everything else is
:class:`RhythmActorRolloutRefWorker`.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker


class GlooRhythmWorker(RhythmActorRolloutRefWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # verl's Worker sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
        if not dist.is_initialized():
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group("gloo", rank=rank, world_size=world)
