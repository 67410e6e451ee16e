"""verl's two layouts of a rollout batch, and the padded grid :func:`rollout_gamma` reads.

verl keeps a rollout batch in one of two layouts (a ``TensorDict`` or a ``DataProto.batch``):

* **padded** (``DataProto``, the legacy trainer): ``prompts`` (B, P) left-padded, ``responses``
  (B, T) right-padded, ``attention_mask`` (B, P + T) marking the real tokens of both, and
  ``response_mask`` (B, T), the loss mask (0 on padding and on tool-output tokens).
* **no-padding** (the v1 trainer and its TransferQueue): ``prompts``, ``responses`` and
  ``response_mask`` are jagged nested tensors, one row per sequence with its own length.

Gamma goes back in the layout it came in: a (B, T) tensor aligned with ``responses`` (padded), or
a jagged nested tensor with the response lengths (no-padding), the layout of verl's ``advantages``.
Only torch is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attnrhythm.errors import AttnRhythmError


@dataclass
class PaddedRollout:
    """A rollout batch on the grid of :func:`attnrhythm.rollout.credit.rollout_gamma`.

    ``prompt_ids``/``prompt_mask`` (B, P) left-padded, ``completion_ids``/``completion_mask`` (B, T)
    right-padded (the mask marks every real response token), ``loss_mask`` (B, T) verl's
    ``response_mask``. ``nested`` tells whether the batch came in the no-padding layout.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    loss_mask: torch.Tensor
    nested: bool

    @property
    def response_lengths(self) -> torch.Tensor:
        """Tokens per response (B,), padding excluded."""
        return self.completion_mask.sum(-1)


def nested_lengths(tensor: torch.Tensor) -> torch.Tensor:
    """Row lengths (B,) of a jagged nested tensor."""
    return tensor.offsets().diff()


def nested_to_padded(tensor: torch.Tensor, *, left: bool = False, pad: float | int = 0) -> torch.Tensor:
    """A jagged (B, j) nested tensor as a dense (B, max j) tensor, padded on the right (or left)."""
    if not tensor.is_nested:
        raise AttnRhythmError("expected a nested tensor (verl's no-padding layout)")
    rows = tensor.unbind()
    width = max((row.shape[0] for row in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=tensor.dtype, device=tensor.values().device)
    for b, row in enumerate(rows):
        n = row.shape[0]
        if n:
            if left:
                out[b, width - n :] = row
            else:
                out[b, :n] = row
    return out


def padded_to_nested(tensor: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The first ``lengths[b]`` entries of each row of a (B, T) tensor, as a jagged nested tensor."""
    if tensor.dim() != 2 or tensor.shape[0] != lengths.shape[0]:
        raise AttnRhythmError(
            f"cannot lay a tensor of shape {tuple(tensor.shape)} onto {lengths.shape[0]} responses"
        )
    rows = [tensor[b, : int(n)] for b, n in enumerate(lengths.tolist())]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _require(data: Mapping[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise AttnRhythmError(
            f"the rollout batch lacks {', '.join(missing)}: rhythm credit needs verl's prompts, "
            "responses and response_mask (plus attention_mask in the padded layout)"
        )


def padded_rollout(data: Mapping[str, torch.Tensor]) -> PaddedRollout:
    """Read ``prompts``, ``responses``, ``response_mask`` (and ``attention_mask``) in either layout."""
    _require(data, ("prompts", "responses", "response_mask"))
    prompts, responses, response_mask = data["prompts"], data["responses"], data["response_mask"]
    if prompts.is_nested or responses.is_nested:
        if not (prompts.is_nested and responses.is_nested and response_mask.is_nested):
            raise AttnRhythmError(
                "prompts, responses and response_mask must all be nested (no-padding) or all dense"
            )
        lengths = nested_lengths(responses)
        if not torch.equal(nested_lengths(response_mask), lengths):
            raise AttnRhythmError("response_mask and responses have different lengths in some rows")
        prompt_ids = nested_to_padded(prompts, left=True)
        prompt_mask = nested_to_padded(
            torch.nested.nested_tensor_from_jagged(
                torch.ones_like(prompts.values()), offsets=prompts.offsets()
            ),
            left=True,
        )
        completion_ids = nested_to_padded(responses)
        width = completion_ids.shape[1]
        completion_mask = (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()
        loss_mask = nested_to_padded(response_mask)
        return PaddedRollout(prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask, nested=True)
    _require(data, ("attention_mask",))
    attention_mask = data["attention_mask"]
    plen = prompts.shape[1]
    if attention_mask.shape != (prompts.shape[0], plen + responses.shape[1]):
        raise AttnRhythmError(
            f"attention_mask {tuple(attention_mask.shape)} does not cover prompts {tuple(prompts.shape)} "
            f"and responses {tuple(responses.shape)}"
        )
    return PaddedRollout(
        prompt_ids=prompts,
        prompt_mask=attention_mask[:, :plen].long(),
        completion_ids=responses,
        completion_mask=attention_mask[:, plen:].long(),
        loss_mask=response_mask.long(),
        nested=False,
    )


def response_layout(values: torch.Tensor, rollout: PaddedRollout) -> torch.Tensor:
    """A (B, T) tensor on the completion grid, laid out like the batch's ``responses``."""
    if rollout.nested:
        return padded_to_nested(values, rollout.response_lengths)
    return values
