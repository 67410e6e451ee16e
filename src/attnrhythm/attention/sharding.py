"""Full parameters for the analysis forward on sharded models (PyTorch FSDP2).

The analysis calls ``model.base_model(...)`` and then the LM head on its own, so the root
module's own forward never runs. Under FSDP2 (``torch.distributed.fsdp.fully_shard``) the
parameters that belong to the root (embeddings, final norm, LM head) are all-gathered by the
root's forward pre-hook; skipped, they stay sharded DTensors and the embedding fails. The
sub-modules that are called (the decoder layers) keep gathering their own parameters through
their hooks as usual.

:func:`full_parameters` unshards every FSDP2 module the analysis bypasses for the duration of
the block and reshards it afterwards, so callers never have to. Outside FSDP2 it does nothing.

The LM head is called once per sequence (and per logits chunk), so when it is an FSDP2 module of
its own (verl wraps ``lm_head`` and ``embed_tokens`` apart from the layers) each call would
all-gather, and ranks analysing different numbers of sequences would issue different numbers of
collectives and hang. :func:`full_parameters` therefore also keeps such a head unsharded for the
whole block (no reshard after each of its forwards), so the collectives of an analysis call do not
depend on the data.

:func:`agreed_count` gives the number of analysis forwards every rank must run (the maximum over
ranks), so a rank with fewer sequences can pad with dummy forwards.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - older torch without FSDP2 in the public namespace
    FSDPModule = None  # type: ignore[assignment,misc]


def bypassed_fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """FSDP2 modules whose forward the analysis skips but whose parameters it uses.

    That is the model itself (its forward is replaced by ``base_model`` + the LM head) and every
    FSDP2 module on the path from the model to the LM head other than the head itself, which is
    called directly and so gathers its own parameters.
    """
    if FSDPModule is None:
        return []
    found = [model] if isinstance(model, FSDPModule) else []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return found
    for module in model.modules():
        if module is model or module is head or not isinstance(module, FSDPModule):
            continue
        if any(sub is head for sub in module.modules()) and module not in found:
            found.append(module)
    return found


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model`` or one of its sub-modules is managed by FSDP2."""
    return FSDPModule is not None and any(isinstance(m, FSDPModule) for m in model.modules())


def sharded_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head when it is an FSDP2 module of its own (not the model itself), else None."""
    if FSDPModule is None or not hasattr(model, "get_output_embeddings"):
        return None
    head = model.get_output_embeddings()
    return head if isinstance(head, FSDPModule) and head is not model else None


def _reshards_after_forward(module: torch.nn.Module) -> bool:
    """Whether an FSDP2 module frees its gathered parameters after each forward (default: yes)."""
    groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", None)  # no public getter
    if not groups:
        return True
    return any(getattr(group, "post_forward_mesh_info", None) is not None for group in groups)


_ROOT_READY: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def ensure_root_initialised(model: torch.nn.Module) -> None:
    """Run one tiny forward through the FSDP2 root before the analysis bypasses it (once per model).

    FSDP2 sets itself up lazily on the first forward: the module whose forward runs first becomes
    the root. Were that a decoder layer (the analysis calls the layers without the root), a later
    ordinary forward of the model would fail ("FSDP requires running forward through the root
    module first"). The tiny forward (one token, no gradients) settles the root as the model;
    when training already ran one it is harmless. Like any FSDP forward, every rank runs it.
    """
    if FSDPModule is None or not isinstance(model, FSDPModule) or model in _ROOT_READY:
        return
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    _ROOT_READY.add(model)


@contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Unshard the FSDP2 modules the analysis bypasses (and a sharded LM head); reshard all on exit.

    A no-op outside FSDP2.
    """
    modules = bypassed_fsdp_modules(model)
    if modules:
        ensure_root_initialised(model)
    head = sharded_head(model)
    for module in modules:
        module.unshard()
    reshard_head = False
    if head is not None:
        reshard_head = _reshards_after_forward(head)
        head.unshard()
        head.set_reshard_after_forward(False, recurse=False)  # its forwards keep the gathered weights
    try:
        yield model
    finally:
        if head is not None:
            head.set_reshard_after_forward(reshard_head, recurse=False)
        # every FSDP2 module, not only those unsharded above: modules called outside the root's
        # forward (e.g. an embedding sharded on its own) may keep their gathered weights otherwise
        if FSDPModule is not None:
            for module in reversed([m for m in model.modules() if isinstance(m, FSDPModule)]):
                module.reshard()


def is_partitioned(model: torch.nn.Module) -> bool:
    """True for FSDP2 (:func:`is_sharded`) or DeepSpeed ZeRO-3 parameters (they carry ``ds_id``).

    Either way a forward may all-gather parameters, so every rank must run as many forwards.
    """
    return is_sharded(model) or any(hasattr(p, "ds_id") for p in model.parameters())


def agreed_count(count: int, model: torch.nn.Module) -> int:
    """The largest ``count`` over the ranks when ``model`` is partitioned in a process group.

    Every rank of a sharded model (FSDP2, or ZeRO-3 without gathered weights) must run the same
    number of forwards (each one all-gathers parameters); a rank that needs fewer pads with
    dummy forwards up to this number. Call it before the first of those forwards: it is a
    collective itself. Without a process group or a partitioned model it is ``count`` itself
    (no communication).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and is_partitioned(model)):
        return count
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())
