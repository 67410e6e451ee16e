"""Which verl actor engines the rhythm credit runs on, and the causal LM it analyses inside one.

:func:`check_actor_config` runs when the ``rhythm_grpo`` trainer is built (before any worker
starts) and refuses, in one line naming the setting to change, what the credit cannot analyse
correctly:

* engines other than FSDP2 (``actor_rollout_ref.actor.strategy``): the analysis calls the
  model's decoder and LM head itself and gathers FSDP2 parameters for that
  (:mod:`attnrhythm.attention.sharding`); FSDP1's flat parameters, Megatron, VeOmni, ... are not
  handled;
* Ulysses sequence parallelism (``ulysses_sequence_parallel_size > 1``): verl splits sequences
  over ranks inside its flash-attention patch, while the analysis runs its own SDPA attention on
  whole sequences, so every sequence-parallel rank would analyse everything and the ranks would
  disagree on the number of forwards;
* FSDP2's CPU offload policy (``fsdp_config.offload_policy=true``, and ``forward_only`` engines,
  which verl builds with it): the parameters stay on the CPU and only verl's own root forward
  moves inputs to the accelerator, which the analysis bypasses. ``param_offload`` and
  ``optimizer_offload`` work: the worker's ``eval_mode()`` loads the parameters onto the device
  before the credit forward and offloads them after;
* TRL beside verl: verl 0.9's FSDP engine imports ``AutoModelForCausalLMWithValueHead`` from
  TRL whenever TRL is importable, and newer TRL (1.x) no longer has it, so the engine build would
  fail inside the workers.

:func:`causal_lm` gives the module to analyse: the engine's module itself, or, with LoRA
(``lora_rank > 0``, verl wraps the model in a PEFT ``PeftModel``), the causal LM inside it with
the adapters in place and active, its FSDP2 root gathered for the duration.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from attnrhythm.attention.sharding import full_parameters
from attnrhythm.errors import AttnRhythmError

ACTOR = "actor_rollout_ref.actor"
SUPPORTED_STRATEGIES = ("fsdp2",)


def _get(config: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(config, key, default=default)


def check_actor_config(config: DictConfig) -> None:
    """Refuse, in one line, actor setups the rhythm credit cannot analyse (see the module doc)."""
    strategy = _get(config, f"{ACTOR}.strategy", "fsdp")
    if strategy not in SUPPORTED_STRATEGIES:
        raise AttnRhythmError(
            f"{ACTOR}.strategy={strategy}: rhythm credit runs on verl's FSDP2 engine only; "
            f"set {ACTOR}.strategy=fsdp2"
        )
    for key in (
        f"{ACTOR}.ulysses_sequence_parallel_size",
        f"{ACTOR}.fsdp_config.ulysses_sequence_parallel_size",
    ):
        size = _get(config, key, 1) or 1
        if int(size) > 1:
            raise AttnRhythmError(
                f"{key}={size}: rhythm credit does not support Ulysses sequence parallelism "
                f"(it analyses whole sequences with its own attention); set {key}=1"
            )
    for key in ("offload_policy", "forward_only"):
        if _get(config, f"{ACTOR}.fsdp_config.{key}", False):
            raise AttnRhythmError(
                f"{ACTOR}.fsdp_config.{key}=true: rhythm credit needs the actor's parameters on the "
                f"accelerator during its forward; set {ACTOR}.fsdp_config.{key}=false (to save memory "
                f"use {ACTOR}.fsdp_config.param_offload=true, which is supported)"
            )
    check_trl_beside_verl()


def check_trl_beside_verl() -> None:
    """Fail in one line when an installed TRL lacks the class verl 0.9's FSDP engine imports from it.

    verl imports ``AutoModelForCausalLMWithValueHead`` from ``trl.experimental.ppo`` or ``trl``
    whenever ``trl`` is importable; nothing is checked when TRL is absent.
    """
    if importlib.util.find_spec("trl") is None:
        return
    for module in ("trl.experimental.ppo", "trl"):
        try:
            if hasattr(importlib.import_module(module), "AutoModelForCausalLMWithValueHead"):
                return
        except ImportError:
            continue
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = f"TRL {version('trl')}"
    except PackageNotFoundError:
        found = "a TRL"
    raise AttnRhythmError(
        f"{found} is installed beside verl, and verl 0.9's FSDP engine imports "
        "AutoModelForCausalLMWithValueHead from TRL, which this TRL no longer has: run verl in an "
        "environment without TRL (pip uninstall trl; keep attnrhythm[train] in another virtualenv)"
    )


@contextmanager
def causal_lm(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The causal LM to analyse inside verl's engine module (PEFT unwrapped, adapters active).

    With LoRA the engine's module is a ``PeftModel`` (FSDP2-sharded as a whole): the analysis
    runs on ``get_base_model()``, the transformers model whose linear layers carry the adapters,
    and the parameters owned by the sharded ``PeftModel`` root are gathered while it runs
    (the analysis bypasses the root's forward). Without PEFT the module is yielded as is.
    """
    base = peft_base(module)
    if base is None:
        yield module
        return
    with full_parameters(module):
        yield base


def peft_base(module: torch.nn.Module) -> torch.nn.Module | None:
    """The transformers model inside a PEFT ``PeftModel`` (adapters in place), None for any other module."""
    unwrap = getattr(module, "get_base_model", None)
    if not (callable(unwrap) and hasattr(module, "peft_config")):
        return None
    return unwrap()
