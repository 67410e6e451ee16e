"""A CPU platform for verl, for tests only: load it with ``VERL_USE_EXTERNAL_MODULES=verl_cpu_platform``.

verl 0.9.1 ships platforms for NVIDIA, AMD and Ascend only. This registers ``cpu`` through verl's
own ``PlatformRegistry`` (its documented extension point); select it with ``VERL_PLATFORM=cpu``.
The FSDP engine registry is keyed by accelerator, so tests also set ``VERL_ENGINE_DEVICE=cuda``
to resolve ``FSDPEngineWithLMHead``; the engine itself then places everything on the CPU and
talks over gloo.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


class _CpuDevice(types.ModuleType):
    """``torch.cpu`` plus the memory queries verl asks every device module for (all zero)."""

    def __init__(self) -> None:
        super().__init__("cpu_device")
        self.__dict__.update({k: v for k, v in vars(torch.cpu).items() if not k.startswith("__")})

    def __getattr__(self, name: str):
        if name == "get_device_name":  # verl's FLOPs counter (inf promised FLOPs for an unknown name)
            return lambda *args, **kwargs: "CPU"
        if name in ("get_rng_state", "set_rng_state"):  # a checkpoint's RNG: the CPU device's is torch's
            return getattr(torch, name)
        if name.startswith(("max_memory", "memory_", "reset_")) or name in ("mem_get_info", "empty_cache"):
            return lambda *args, **kwargs: 0 if name != "mem_get_info" else (0, 0)
        raise AttributeError(name)


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    _module = _CpuDevice()

    device_name = "cpu"
    vendor_name = "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # verl moves tensors with .to(current_device())
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl's resource pools count accelerators under this name: tests start Ray with logical
        # GPUs (ray.init(num_gpus=N)), one per actor rank, though every rank computes on the CPU
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None
