"""verl's mode-dependent trainer code run for ``sync``, ``rhythm_grpo`` and ``colocate_async`` (control).

``rhythm_grpo`` runs twice: with the default head setting and with ``heads=refresh:2``, whose head
refresh state it writes beside verl's checkpoint (``rhythm_heads.json``) and restores on resume.

tests/test_verl_sync_mode.py runs this as a Ray driver with a local Ray cluster and TransferQueue.
For each mode, verl's own trainer class (``get_trainer_cls(mode)(config)``) runs verl's own
methods wherever verl tests ``trainer_mode == "sync"``:

* ``_build_replay_buffer`` (in ``__init__``): the buffer class and its batch settings; then the
  buffer's ``_sync_metadata_from_transfer_queue`` / ``_terminal_eviction_reasons`` /
  ``_sampleable_terminal_keys`` on a finished and a failed prompt group written to TransferQueue
  (the sync buffer keeps the failed group; ``sample`` is run for the sync-like modes);
* ``_init_tokenizer`` + ``_init_dataloader``: ``data.gen_batch_size`` and the dataloader's batch size;
* ``_add_batch_to_generate`` (prompts registered in TransferQueue, in flight) then
  ``_save_checkpoint``: the files written;
* a new trainer with ``resume_mode=auto``: ``_load_checkpoint`` (global step, actor path, dataloader
  position) and ``_reissue_inflight_prompts`` (what would be generated again).

Stand-ins, for what does not depend on the mode: the actor worker group (``save_checkpoint`` /
``load_checkpoint`` write and read a marker file; the real worker's checkpoints are checked in
tests/test_verl_loop.py) and the agent loop manager (records the prompts it is asked to
generate). Usage: ``python verl_sync_run.py SPEC_JSON OUT_FILE``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

# run name -> (trainer mode, extra overrides); rhythm_grpo_refresh: heads=refresh:K, whose head
# refresh state the mode saves beside verl's checkpoint and restores on resume
RUNS = {
    "sync": ("sync", []),
    "rhythm_grpo": ("rhythm_grpo", []),
    "rhythm_grpo_refresh": ("rhythm_grpo", ["+trainer.v1.rhythm_grpo.heads=refresh:2"]),
    "colocate_async": ("colocate_async", []),
}


class WorkerGroupStandIn:
    """The actor worker group's checkpoint calls: a marker file per save, the paths loaded."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def save_checkpoint(self, local_path, remote_path=None, global_step=0, max_ckpt_to_keep=None) -> None:
        os.makedirs(local_path, exist_ok=True)
        Path(local_path, "actor_state").write_text(str(global_step))

    def load_checkpoint(self, local_path, del_local_after_load=False) -> None:
        self.loaded.append(local_path)


class AgentLoopManagerStandIn:
    """Records the dataset indices of the prompts it is asked to generate (no rollouts)."""

    def __init__(self) -> None:
        self.generated: list[list[int]] = []

    def generate_sequences(self, batch) -> None:
        self.generated.append([int(i) for i in batch["index"]])


def compose(overrides: list[str]):
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose("ppo_trainer", overrides=overrides)


def clear_train_partition() -> None:
    import transfer_queue as tq

    keys = list((tq.kv_list("train") or {}).get("train", {}))
    if keys:
        tq.kv_clear(keys=keys, partition_id="train")


def replay_buffer_behaviour(buffer, sync_like: bool) -> dict:
    """A finished group g0 (2 trajectories) and a failed one g1 (1 of 2) in TransferQueue; what verl keeps."""
    import transfer_queue as tq
    from tensordict import TensorDict

    prompt_tags = [
        {"is_prompt": True, "status": "finished", "global_steps": 1},
        {"is_prompt": True, "status": "failure", "global_steps": 1},
    ]
    tq.kv_batch_put(keys=["g0", "g1"], partition_id="train", tags=prompt_tags)
    trajectories = ["g0_0_0", "g0_1_0", "g1_0_0"]
    tq.kv_batch_put(
        keys=trajectories,
        partition_id="train",
        fields=TensorDict({"x": torch.arange(6.0).reshape(3, 2)}, batch_size=3),
        tags=[{"status": "finished", "global_steps": 1} for _ in trajectories],
    )
    buffer._sync_metadata_from_transfer_queue()
    reasons = buffer._terminal_eviction_reasons(1, "train")
    out = dict(
        evicted_as_failed=sorted(reasons[2]),
        sampleable=sorted(buffer._sampleable_terminal_keys("train", reasons)),
    )
    if sync_like:  # the async buffer would evict g1 and refill it through the agent loop
        batch, _ = buffer.sample(global_steps=1, partition_id="train", batch_size=2)
        out["sampled"] = sorted(batch.keys)
    clear_train_partition()
    return out


def run_mode(name: str, spec: dict) -> dict:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1 import get_trainer_cls

    mode, extra = RUNS[name]
    ckpt = Path(spec["work"]) / name / "checkpoints"
    base = [
        f"trainer.v1.trainer_mode={mode}",
        *spec["overrides"],
        *extra,
        f"trainer.default_local_dir={ckpt}",
    ]
    trainer = get_trainer_cls(mode)(compose([*base, "trainer.resume_mode=disable"]))
    buffer = trainer.replay_buffer
    out: dict = dict(
        trainer_cls=type(trainer).__name__,
        trainer_mode=trainer.trainer_mode,
        replay_buffer=type(buffer).__name__,
        buffer_settings=dict(
            gen_batch_size=buffer.gen_batch_size,
            train_batch_size=buffer.train_batch_size,
            max_inflight_gen_batches=buffer.max_inflight_gen_batches,
            sync_refill_failed_groups=buffer.sync_refill_failed_groups,
            filter_groups_metric=buffer.filter_groups_metric,
            trainer_config=OmegaConf.to_container(buffer.trainer_config) if buffer.trainer_config else {},
        ),
        parameter_sync_step=trainer.parameter_sync_step,
    )
    out["buffer_behaviour"] = replay_buffer_behaviour(buffer, sync_like=mode != "colocate_async")

    trainer._init_tokenizer()
    trainer._init_dataloader()
    out["gen_batch_size"] = trainer.config.data.get("gen_batch_size", None)
    out["dataloader_batch_size"] = trainer.train_dataloader.batch_size

    # step 1: a batch fetched and in flight (registered in TransferQueue), then the checkpoint
    trainer.global_steps = 1
    trainer.agent_loop_manager = AgentLoopManagerStandIn()
    trainer.actor_rollout_wg = WorkerGroupStandIn()
    trainer._add_batch_to_generate()
    out["submitted"] = trainer.agent_loop_manager.generated
    refresh = getattr(trainer, "head_refresh", None)
    if refresh is not None:  # spans collected during step 1, as the mode's _collect_spans adds them
        refresh.add([0, 1], [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[2.0, 1.0], [4.0, 3.0]])])
        out["head_state_saved"] = refresh.state()
    trainer._save_checkpoint()
    out["checkpoint_files"] = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    out["next_indices"] = [int(i) for i in trainer._next_train_batch()["index"]]
    clear_train_partition()  # a restart: TransferQueue starts empty

    resumed = get_trainer_cls(mode)(compose([*base, "trainer.resume_mode=auto"]))
    resumed._init_tokenizer()
    resumed._init_dataloader()
    resumed.actor_rollout_wg = WorkerGroupStandIn()
    resumed.agent_loop_manager = AgentLoopManagerStandIn()
    resumed._load_checkpoint()
    out["resumed_global_steps"] = resumed.global_steps
    out["resumed_actor"] = [str(Path(p).relative_to(ckpt)) for p in resumed.actor_rollout_wg.loaded]
    resumed.global_steps += 1  # as fit() does before its first step
    out["reissued"] = resumed._reissue_inflight_prompts()
    out["regenerated"] = resumed.agent_loop_manager.generated
    out["resumed_next_indices"] = [int(i) for i in resumed._next_train_batch()["index"]]
    if mode == "rhythm_grpo":
        out["rhythm"] = (resumed.rhythm.flat(), resumed.configured_mode, resumed.parameter_sync_step)
        if resumed.head_refresh is not None:
            out["head_state_resumed"] = resumed.head_refresh.state()
    clear_train_partition()
    return out


def main(spec_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    import attnrhythm.integrations.verl.plugin  # noqa: F401  (registers rhythm_grpo, as verl's entry point does)

    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, object_store_memory=100 * 1024**2)
    try:
        tq_config = compose(spec["overrides"]).transfer_queue
        tq_config.enable = True
        OmegaConf.resolve(tq_config)
        tq.init(tq_config)
        try:
            results = {name: run_mode(name, spec) for name in RUNS}
        finally:
            tq.close()
    finally:
        ray.shutdown()
    torch.save(results, out_file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
