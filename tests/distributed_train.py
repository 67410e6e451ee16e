"""One rank of the 2-process trainer check (launched by tests/test_train_distributed.py via torchrun).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_train.py TOKENIZER_DIR OUT_DIR

On CPU with gloo, in the same processes: (1) ``separate`` credit, 2 steps, a checkpoint per step;
(2) that run resumed to step 3; (3) ``fused`` credit (``num_iterations=2``), 2 steps; (4) the ``loss``
path (``num_iterations=1``, 2 micro-batches per step) and (5) the same run with the separate
forward. Every rank
saves what it saw to ``OUT_DIR/rank{RANK}.pt``; the test checks it.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch


def main(tokenizer_dir: str, out_dir: str) -> None:
    import datasets
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig

    from attnrhythm.train import RhythmCreditConfig, RhythmGRPOTrainer

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tiny_model() -> LlamaForCausalLM:
        torch.manual_seed(0)  # the same initial weights on every rank, as DDP expects
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.5,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return LlamaForCausalLM(config)

    def lowercase_share(prompts, completions, **kwargs):  # non-zero advantages within each group
        return [sum(c.islower() for c in text) / (len(text) + 1) for text in completions]

    dataset = datasets.Dataset.from_list(
        [{"prompt": f"Question {i}: add {i} and {i + 3}."} for i in range(16)]
    )
    seen: dict[str, list] = {}

    class Recording(RhythmGRPOTrainer):
        def _apply_rhythm_credit(self, output):
            before = output["advantages"].clone()
            mask = (output["completion_mask"] * output.get("tool_mask", 1)).clone()
            out = super()._apply_rhythm_credit(output)
            seen[self.name].append((before, mask, out["advantages"].clone()))
            return out

        def _save(self, output_dir=None, state_dict=None):  # every rank calls it; should_save writes
            if self.args.should_save:
                seen[f"{self.name}/saves"].append(str(output_dir))
            return super()._save(output_dir, state_dict)

    def run(name: str, path: str, credit_forward: str, resume: bool = False, **overrides) -> Recording:
        seen[name], seen[f"{name}/saves"] = [], []
        args = dict(
            output_dir=path,
            use_cpu=True,
            report_to=[],
            max_steps=2,
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=12,
            logging_steps=1,
            save_strategy="no",
            bf16=False,
            fp16=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        args.update(overrides)
        rhythm = RhythmCreditConfig(
            strategy="coupled", fai_horizon=(2, 8), window=4, batch_size=3, credit_forward=credit_forward
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Recording(
                tiny_model(),
                reward_funcs=lowercase_share,
                args=GRPOConfig(**args),
                train_dataset=dataset,
                processing_class=tokenizer,
                rhythm=rhythm,
            )
            trainer.name = name
            trainer.train(resume_from_checkpoint=True if resume else None)
        return trainer

    results = {}
    ckpt = os.path.join(out_dir, "run")
    micro = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)  # 2 micro-batches a step
    for name, forward, resume, overrides in [
        ("separate", "separate", False, dict(save_strategy="steps", save_steps=1)),
        ("resumed", "separate", True, dict(save_strategy="steps", save_steps=1, max_steps=3)),
        ("fused", "fused", False, dict(num_iterations=2)),
        ("loss", "auto", False, micro),
        ("loss-separate", "separate", False, micro),
    ]:
        path = ckpt if name in ("separate", "resumed") else os.path.join(out_dir, name)
        trainer = run(name, path, forward, resume, **overrides)
        results[name] = {
            "records": seen[name],
            "saves": seen[f"{name}/saves"],
            "global_step": trainer.state.global_step,
            "logs": [
                {k: v for k, v in h.items() if k.startswith("rhythm/") or k == "step"}
                for h in trainer.state.log_history
                if "loss" in h
            ],
            "world": trainer.accelerator.num_processes,
            "path": trainer.rhythm_credit_path,
            "params": {
                n: p.detach().clone() for n, p in trainer.model.named_parameters() if "embed" not in n
            },
        }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
