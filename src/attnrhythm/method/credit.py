"""docs/method.md section 5: per-token credit gamma and the GRPO advantage shaping rule.

Its settings, :class:`~attnrhythm.method.config.CreditConfig`, are declared in :mod:`.config`.
"""

from __future__ import annotations

import math
import random

import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import STRATEGIES, CreditConfig
from attnrhythm.method.rhythm import Roles, find_roles, top_q


def indicator(n: int, positions: list[int] | set[int]) -> torch.Tensor:
    """A float64 vector of length n with 1 at ``positions``."""
    out = torch.zeros(n, dtype=torch.float64)
    if positions:
        out[torch.tensor(sorted(positions), dtype=torch.long)] = 1.0
    return out


def random_selection(n: int, q: float, seed: int) -> list[int]:
    """A seeded random subset of ceil(q * n) positions of 0..n-1."""
    rng = random.Random(seed)
    return sorted(rng.sample(range(n), math.ceil(q * n)))


def gamma(
    strategy: str,
    *,
    waad: torch.Tensor,
    fai: torch.Tensor,
    delta: torch.Tensor,
    entropy: torch.Tensor,
    config: CreditConfig = CreditConfig(),
    roles: Roles | None = None,
) -> torch.Tensor:
    """gamma_t of one response (float64, length n) for ``strategy`` (see STRATEGIES).

    ``roles``, when given, must come from :func:`find_roles` with this ``config``; it saves
    recomputing them for each strategy.
    """
    n = waad.shape[0]
    boost = config.amp - 1.0
    bottom = config.selection == "bottom"
    if strategy == "none":
        return torch.ones(n, dtype=torch.float64)
    if strategy == "random":
        return 1.0 + boost * indicator(n, random_selection(n, config.q, config.seed))
    if strategy == "entropy":
        return 1.0 + boost * indicator(n, top_q(entropy, config.q, bottom=bottom))
    roles = roles or find_roles(
        waad,
        fai,
        delta,
        q=config.q,
        k=config.k,
        tau_waad=config.tau_waad,
        tau_delta=config.tau_delta,
        bottom=bottom,
    )
    if strategy == "local":
        return 1.0 + boost * indicator(n, roles.preplan)
    if strategy == "global":
        return 1.0 + boost * indicator(n, roles.anchor)
    if strategy == "coupled":
        dominated = set(roles.dominated)
        free_anchors = [t for t in roles.anchor if t not in dominated]
        return (
            1.0
            + boost * indicator(n, free_anchors)
            + (1.0 - config.alpha) * boost * indicator(n, dominated)
            + config.alpha * boost * indicator(n, roles.intro)
        )
    raise AttnRhythmError(f"unknown credit strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


def shape_advantages(
    advantages: torch.Tensor, gammas: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A~_t = gamma_t * A_t where A_t >= 0, A_t unchanged where A_t < 0.

    Args:
        advantages: (B,) sequence-level or (B, T) token-level advantages.
        gammas: (B, T) per-token credit (1 where no credit applies).
        mask: optional (B, T) completion mask; masked positions keep gamma = 1 (and are
            usually ignored by the loss anyway).
    Returns:
        (B, T) shaped token-level advantages.
    """
    if advantages.dim() == 1 and gammas.dim() == 2 and advantages.shape[0] == gammas.shape[0]:
        advantages = advantages[:, None].expand_as(gammas)
    if advantages.shape != gammas.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} and gamma {tuple(gammas.shape)} differ")
    g = gammas.to(advantages.dtype)
    if mask is not None:
        g = torch.where(mask.bool(), g, torch.ones_like(g))
    return torch.where(advantages >= 0, advantages * g, advantages)
