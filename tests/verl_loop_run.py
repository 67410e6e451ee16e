"""verl's own training loop with the ``rhythm_grpo`` mode, on the CPU (tests/test_verl_loop.py runs it).

This process is the Ray driver, as verl's ``TaskRunnerV1.run`` is: a local Ray cluster (16 logical
CPUs, one logical GPU per actor rank), TransferQueue, then verl's trainer
(``RhythmPPOTrainer``) built and run by its own ``init()`` and ``fit()``: verl's
``RayWorkerGroup`` over ``RhythmActorRolloutRefWorker`` (role ``actor``, FSDP2 on gloo, CPU platform
tests/verl_cpu_platform.py), verl's dataloader, replay buffer, reward loop, ``_step_once``
(balance, old log-probs + rhythm credit, advantages, actor update), metrics, checkpoints.

Replaced, because it needs GPUs: rollout generation. verl's agent loop manager and workers run,
but their agent loop (tests/verl_written_rollouts.py) returns written rollouts instead of calling
vLLM/SGLang, and there are no rollout replicas, so the sync trainer's weight-sync hooks
(``on_init_end``, ``on_step_end``, ``on_sample_end``: wake/sleep/update the rollout engine) have
nothing to do. ``_enable_hybrid_replicas = False`` is verl's own switch for a trainer without
colocated replicas (it makes the actor worker's role ``actor``).

Observed (not changed): what TransferQueue holds after the credit and around the shaping, the
step's metrics. Usage: ``python verl_loop_run.py CONFIG_JSON OUT_FILE``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

FIELDS = ["prompts", "responses", "response_mask", "rhythm_gamma", "rhythm_counts"]


def compose_config(spec: dict):
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=spec["overrides"])


def dense_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [row.clone() for row in tensor.unbind()]


def main(spec_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(open(spec_file).read())
    import ray
    import transfer_queue as tq
    import verl_written_rollouts  # noqa: F401  (registers the rollout backend "written")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ
    from verl_gloo_worker import GlooRhythmWorker

    from attnrhythm.integrations.verl.trainer import COUNTS_FIELD, GAMMA_FIELD, RhythmPPOTrainer
    from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker

    class ObservedTrainer(RhythmPPOTrainer):
        """The rhythm trainer, recording what TransferQueue holds at each stage of a step."""

        def __init__(self, config):
            super().__init__(config)
            self._enable_hybrid_replicas = False  # no colocated rollout replicas: written rollouts
            self.record: list[dict] = []

        def _init_resource_pool_mgr(self):
            super()._init_resource_pool_mgr()  # the actor role runs RhythmActorRolloutRefWorker
            for role, cls in self.role_worker_mapping.items():
                assert cls.__ray_actor_class__ is RhythmActorRolloutRefWorker, role
                self.role_worker_mapping[role] = ray.remote(GlooRhythmWorker)  # ... on plain gloo

        def on_init_end(self):  # rollout weight sync: there is no rollout engine
            return None

        def on_step_end(self):
            return None

        def on_sample_end(self):
            return None

        def _get(self, batch, fields):
            return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)

        def _compute_old_log_prob(self, batch, metrics):
            batch = super()._compute_old_log_prob(batch, metrics)
            data = self._get(batch, FIELDS + ["old_log_probs"])
            step = {key: dense_rows(data[key]) for key in FIELDS + ["old_log_probs"]}
            tags = [dict(t) for t in batch.tags]
            step.update(keys=list(batch.keys), tags=tags, global_step=self.global_steps)
            if self.head_refresh is not None:  # heads: refresh:K, the head set this step used
                step.update(heads=self.head_refresh.heads, refreshes=self.head_refresh.refreshes)
            self.record.append(step)
            return batch

        def _shape_advantages(self, batch, metrics):
            before = self._get(batch, ["advantages", GAMMA_FIELD])
            batch = super()._shape_advantages(batch, metrics)
            after = self._get(batch, ["advantages"])
            self.record[-1].update(
                advantages=dense_rows(before["advantages"]), shaped=dense_rows(after["advantages"])
            )
            return batch

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            self.record[-1]["metrics"] = numbers

    env = {key: os.environ[key] for key in spec["worker_env"]}
    ray.init(
        num_cpus=16,  # TransferQueue's controller and storage, reward and agent loop workers, the ranks
        num_gpus=spec["world"],
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )
    try:
        config = compose_config(spec)
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        try:
            trainer = ObservedTrainer(config)
            trainer.init()
            manager = AgentLoopManagerTQ.create(
                config=config,
                llm_client=trainer.get_llm_client(),
                teacher_client=trainer.get_teacher_client(),
                reward_loop_worker_handles=trainer.get_reward_handles(),
            )
            trainer.fit(manager)
            torch.save(
                dict(
                    record=trainer.record,
                    trainer_mode=(trainer.trainer_mode, trainer.configured_mode),
                    replay_buffer=type(trainer.replay_buffer).__name__,
                    gen_batch_size=config.data.get("gen_batch_size", None),
                    counts_field=COUNTS_FIELD,
                ),
                out_file,
            )
        finally:
            tq.close()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
