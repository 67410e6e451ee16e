"""docs/method.md section 5: per-token credit gamma and the GRPO advantage shaping rule.

Its settings, :class:`~attnrhythm.method.config.CreditConfig`, are declared in :mod:`.config`.
"""

from __future__ import annotations

import math
import random

import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import GAMMA_NORMS, STRATEGIES, CreditConfig
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

    With ``config.gamma_norm == "mean"`` the result is divided by its mean over the whole response
    (:func:`normalize_gamma`; a record has no loss mask, so every response token counts).
    ``roles``, when given, must come from :func:`find_roles` with this ``config``; it saves
    recomputing them for each strategy.
    """
    raw = _raw_gamma(strategy, waad=waad, fai=fai, delta=delta, entropy=entropy, config=config, roles=roles)
    return raw if config.gamma_norm == "none" else normalize_gamma(raw[None], None, config.gamma_norm)[0]


def _raw_gamma(
    strategy: str,
    *,
    waad: torch.Tensor,
    fai: torch.Tensor,
    delta: torch.Tensor,
    entropy: torch.Tensor,
    config: CreditConfig,
    roles: Roles | None,
) -> torch.Tensor:
    """docs/method.md section 5's gamma_t, before any normalisation."""
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


def normalize_gamma(
    gammas: torch.Tensor, mask: torch.Tensor | None = None, norm: str = "mean"
) -> torch.Tensor:
    """Each row of ``gammas`` (B, T) divided by its mean over the row's ``mask`` tokens (``norm="mean"``).

    ``mask`` (B, T) marks the loss tokens (None: every position); positions outside it are set to 1
    (no credit there). A row with no mask token, or whose mean is not > 0 (only possible with
    amp < 1), is left as it is. The division is scale-free: normalising an already normalised gamma
    over the same tokens changes nothing, so it does not matter whether a gamma was normalised over
    the whole response before. ``norm="none"`` returns ``gammas`` with only the mask applied.
    """
    if norm not in GAMMA_NORMS:
        raise AttnRhythmError(f"bad gamma_norm {norm!r}: use one of {', '.join(GAMMA_NORMS)}")
    keep = torch.ones_like(gammas, dtype=torch.bool) if mask is None else mask.to(gammas.device).bool()
    g = torch.where(keep, gammas, torch.ones_like(gammas))
    if norm == "none":
        return g
    count = keep.sum(-1, keepdim=True)
    mean = torch.where(keep, g, torch.zeros_like(g)).sum(-1, keepdim=True) / count.clamp_min(1)
    ok = (count > 0) & (mean > 0)
    return torch.where(keep & ok, g / torch.where(ok, mean, torch.ones_like(mean)), g)


def shape_advantages(
    advantages: torch.Tensor,
    gammas: torch.Tensor,
    mask: torch.Tensor | None = None,
    config: CreditConfig | None = None,
) -> torch.Tensor:
    """The GRPO shaping rule: A~_t = gamma_t * A_t where A_t >= 0, A_t unchanged where A_t < 0.

    ``config`` (default :class:`CreditConfig`) picks the variant: ``gamma_norm="mean"`` first divides
    each row's gamma by its mean over the ``mask`` tokens (:func:`normalize_gamma`), so a row whose
    advantage is one value A keeps its mass, sum of A~ over the mask = A x (mask tokens);
    ``shape="both"`` scales A_t < 0 too.

    Args:
        advantages: (B,) sequence-level or (B, T) token-level advantages.
        gammas: (B, T) per-token credit (1 where no credit applies).
        mask: optional (B, T) loss mask (TRL's completion mask, verl's response mask); masked
            positions keep gamma = 1 (and are usually ignored by the loss anyway).
        config: the credit settings; only ``gamma_norm`` and ``shape`` are read.
    Returns:
        (B, T) shaped token-level advantages.
    """
    config = config if config is not None else CreditConfig()
    if advantages.dim() == 1 and gammas.dim() == 2 and advantages.shape[0] == gammas.shape[0]:
        advantages = advantages[:, None].expand_as(gammas)
    if advantages.shape != gammas.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} and gamma {tuple(gammas.shape)} differ")
    g = normalize_gamma(gammas.to(advantages.dtype), mask, config.gamma_norm)
    if config.shape == "both":
        return advantages * g
    return torch.where(advantages >= 0, advantages * g, advantages)
