"""One rank of the verl engine test in another actor setup (tests/test_verl_engine_variants.py starts it).

Like tests/verl_engine_run.py (same rows, settings and CPU platform), with the actor config changed
by VARIANT:

* ``lora``: ``lora_rank=4`` (verl wraps the model in a PEFT ``PeftModel`` before FSDP2); the LoRA
  B matrices, zero at initialisation, are set to non-zero values so the adapters change the
  outputs. Reference: ``rollout_gamma`` on a plain PEFT model holding the engine's gathered weights
  (adapters active), and on that model merged (``merge_and_unload``);
* ``offload``: ``param_offload=true`` and ``optimizer_offload=true`` (verl moves the parameters
  off the device between calls; the worker's ``eval_mode()`` brings them back for the credit).

Usage: ``python verl_engine_variants_run.py VARIANT MODEL_DIR OUT_FILE`` (env as verl_engine_run.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist
from omegaconf import open_dict
from verl_engine_run import SETTINGS, compose_config, rollout_rows

LORA = dict(lora_rank=4, lora_alpha=8, target_modules="all-linear")


def actor_config(variant: str, model_dir: str):
    config = compose_config(model_dir).actor_rollout_ref
    with open_dict(config):
        if variant == "lora":
            config.model.update(LORA)
        elif variant == "offload":
            config.actor.fsdp_config.param_offload = True
            config.actor.fsdp_config.optimizer_offload = True
    return config


def reference_models(variant: str, model_dir: str, engine) -> list[torch.nn.Module]:
    """Plain transformers model(s) with the weights the engine holds (adapter and merged for LoRA)."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    if variant != "lora":
        return [plain]
    from peft import LoraConfig, get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(engine.module, options=StateDictOptions(full_state_dict=True))
    lora_config = LoraConfig(
        task_type="CAUSAL_LM", r=LORA["lora_rank"], lora_alpha=LORA["lora_alpha"], target_modules="all-linear"
    )
    adapted = get_peft_model(plain, lora_config)
    missing, unexpected = adapted.load_state_dict(full, strict=False)
    assert not unexpected and not [k for k in missing if "lora" in k], (missing, unexpected)
    adapted.eval()
    merged = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa"), lora_config
    )
    merged.load_state_dict(full, strict=False)
    return [adapted.get_base_model(), merged.merge_and_unload().eval()]


def main(variant: str, model_dir: str, out_file: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    from verl.utils import tensordict_utils as tu

    from attnrhythm.analyze import Analyzer
    from attnrhythm.integrations.verl.layout import padded_rollout
    from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker
    from attnrhythm.rollout.config import RhythmCreditConfig
    from attnrhythm.rollout.credit import rollout_gamma

    settings = RhythmCreditConfig(**SETTINGS)
    worker = RhythmActorRolloutRefWorker(config=actor_config(variant, model_dir), role="actor")
    worker.init_model()
    engine = worker.actor.engine
    if variant == "lora":
        with torch.no_grad():
            for name, param in engine.module.named_parameters():
                if "lora_B" in name:
                    param.add_(0.05)  # B = 0 at init: make the adapters matter
    rows = rollout_rows(rank, 97)
    td = tu.list_of_dict_to_tensordict(rows)
    tu.assign_non_tensor(td, rhythm_credit=asdict(settings), rhythm_step=3)
    out = dict(variant=variant, module=type(engine.module).__name__)
    try:
        got = worker.compute_rhythm_credit(td)
    except Exception as error:  # noqa: BLE001 - reported by the test in one line
        out["error"] = f"{type(error).__name__}: {error}"
        torch.save(out, out_file)
        return
    out["gamma"] = [g.clone() for g in got["rhythm_gamma"].unbind()]
    grid = padded_rollout(td)

    def reference(model: torch.nn.Module) -> torch.Tensor:
        args = (grid.prompt_ids, grid.prompt_mask, grid.completion_ids, grid.completion_mask, grid.loss_mask)
        analyzer = Analyzer(model, settings.analysis_config())
        ref = rollout_gamma(
            analyzer, settings.strategy, *args, batch_size=settings.batch_size, seed_base=(3, rank)
        )
        return ref.gamma.clone()

    references = [reference(model) for model in reference_models(variant, model_dir, engine)]
    if variant == "lora":  # the adapters change the model: the base model's credit differs
        from transformers import AutoModelForCausalLM

        out["base_gamma"] = reference(
            AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
        )
    out.update(references=references, response_lengths=[len(r["responses"]) for r in rows])
    torch.save(out, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
