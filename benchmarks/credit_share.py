"""Cost of the rhythm credit inside GRPO steps on CPU: separate credit forward vs fused capture.

For each credit forward (``separate``, ``fused``) a fresh copy of the policy is trained with
``RhythmGRPOTrainer`` for ``--steps`` optimiser steps. With ``--num-iterations 1`` (TRL's
default) ``fused`` captures the statistics in TRL's loss forward (path ``loss``); with 2, TRL
runs its no-grad ``old_per_token_logps`` forward and ``fused`` captures there (path
``old-logps``). Reported per mode:

* ``s/step``: mean wall time of an optimiser step (TRL's ``step_time``: generation, reward, the
  old-logprob forward if any, credit, loss, backward, update), over all steps of the run.
* ``credit s``: the credit's own seconds for one rollout batch, timed on the *same* rollouts (the
  run's last rollout batch, or its last micro-batch for ``loss``) back to back, best of
  ``--repeats``: ``separate`` = the separate credit forward and shaping (``rollout_gamma``), what
  the trainer adds to a step; ``old-logps`` = TRL's old-logprob forward *with* the capture and the
  shaping minus the same forward without (what TRL runs anyway); ``loss`` = TRL's loss forward
  (``compute_loss``, gradients on) of the micro-batch *with* the capture and the shaping (plain
  (B,) advantages) minus the same loss forward with the advantages already shaped (no capture).
* ``credit share``: credit s per rollout batch / seconds per rollout batch (= s/step x
  ``num_iterations``, one rollout batch serves that many steps; gradient accumulation is 1).

Runs in one process or under ``torchrun`` (each rank times its own slice; rank 0 prints, after
taking the max over ranks of every time so the slowest rank counts)::

    python benchmarks/credit_share.py                       # num_iterations 1: separate vs loss
    python benchmarks/credit_share.py --num-iterations 2    # separate vs old-logps
    torchrun --nproc_per_node 2 benchmarks/credit_share.py --threads 1

The machine may be shared: compare rows of one invocation (the modes run back to back).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model spec for attnrhythm.models.load_model")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per mode (even)")
    parser.add_argument("--batch", type=int, default=8, help="completions per process and step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument(
        "--repeats", type=int, default=3, help="back-to-back timings of the credit (best kept)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: leave as is)")
    parser.add_argument(
        "--num-iterations", type=int, default=1, help="TRL's num_iterations (1: fused = the loss forward)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from attnrhythm.models import load_model
    from attnrhythm.rollout.credit import credit_from_results, rollout_gamma
    from attnrhythm.train import RhythmCreditConfig, RhythmGRPOTrainer
    from attnrhythm.train.credit_trainer import _FusedBatch

    iterations = args.num_iterations

    prompts = [
        f"Compute {a} + {b}. Think step by step, then answer." for a in range(1, 9) for b in range(1, 9)
    ]
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts])

    def lowercase_share(prompts, completions, **kwargs):
        return [sum(c.islower() for c in text) / (len(text) + 1) for text in completions]

    class Keeping(RhythmGRPOTrainer):
        def _apply_rhythm_credit(self, output):
            self.last_rollout = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
            return super()._apply_rhythm_credit(output)

    def run_mode(mode: str) -> tuple:
        model, tokenizer = load_model(args.model)
        config = GRPOConfig(
            output_dir=f"/tmp/credit_share-{mode}",
            use_cpu=True,
            report_to=[],
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            num_generations=args.generations,
            max_completion_length=args.completion_length,
            num_iterations=iterations,
            logging_steps=1,
            save_strategy="no",
            bf16=False,
            fp16=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Keeping(
                model,
                reward_funcs=lowercase_share,
                args=config,
                train_dataset=dataset,
                processing_class=tokenizer,
                rhythm=RhythmCreditConfig(strategy="coupled", credit_forward=mode),
            )
            trainer.train()
        steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
        seconds_per_step = sum(steps) / len(steps)

        batch = trainer.last_rollout
        path = trainer.rhythm_credit_path
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        keep = batch["completion_ids"].shape[1]
        loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        rhythm = trainer.rhythm

        shaped = None
        if path == "loss":  # the micro-batch's advantages as the loss forward shapes them
            shaped = dict(batch)
            trainer.compute_loss(trainer.model, shaped)

        def plain_forward() -> None:
            if path == "loss":  # (B, T) advantages: no capture
                trainer.compute_loss(trainer.model, dict(shaped))
                return
            GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, ids, mask, keep, args.batch
            )

        def fused_forward() -> None:
            if path == "loss":  # (B,) advantages: the loss forward captures and shapes
                trainer.compute_loss(trainer.model, dict(batch))
                return
            trainer._rhythm_fused_batch = _FusedBatch("old-logps")
            trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, args.batch)
            credit_from_results(
                rhythm.credit_config(),
                rhythm.strategy,
                trainer._rhythm_fused_batch.results,
                batch["completion_ids"],
                batch["completion_mask"],
                loss_mask,
            )
            trainer._rhythm_fused_batch = None

        def separate_credit() -> None:
            with trainer._unwrapped_policy() as policy:
                rollout_gamma(
                    trainer._analyzer_for(policy),
                    rhythm.strategy,
                    batch["prompt_ids"],
                    batch["prompt_mask"],
                    batch["completion_ids"],
                    batch["completion_mask"],
                    loss_mask,
                    batch_size=rhythm.batch_size,
                )

        best: dict[str, float] = {}
        routes = {"plain": plain_forward, "fused": fused_forward, "separate": separate_credit}
        if path != "loss":  # the loss forward carries gradients, as in training
            routes = {name: torch.no_grad()(route) for name, route in routes.items()}
        for _ in range(args.repeats):
            for name, route in routes.items():  # interleaved: the same load on each
                started = time.perf_counter()
                route()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
        credit = best["separate"] if mode == "separate" else best["fused"] - best["plain"]
        values = torch.tensor([seconds_per_step, credit, best["plain"], best["fused"], best["separate"]])
        values = trainer.accelerator.gather(values.to(trainer.accelerator.device)).view(-1, 5).max(0).values
        return (path, trainer.accelerator.num_processes, *values.tolist())

    rows = [run_mode(mode) for mode in ("separate", "fused")]

    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"torch threads per process: {torch.get_num_threads()}; steps per mode: {args.steps}; "
            f"num_iterations: {iterations}"
        )
        print(
            "| credit path | processes | s/step | credit s / rollout batch | credit share |"
            " TRL forward s (old-logprob, or loss for `loss`) | with capture s | separate credit s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for mode, world, sps, credit, plain, fused, separate in rows:
            share = credit / (sps * iterations)
            print(
                f"| {mode} | {world} | {sps:.2f} | {credit:.3f} | {share:.1%} | {plain:.3f} | {fused:.3f} |"
                f" {separate:.3f} |"
            )


if __name__ == "__main__":
    main()
