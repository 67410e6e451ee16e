"""Head sets that follow training: the corpus head set re-derived from recent rollouts.

``heads: refresh:K`` in a trainer: every K steps the span d[l,h] of every rollout analysed since
the last refresh becomes a corpus, and :func:`attnrhythm.headsets.corpus_heads` (the rule of
``attnrhythm heads``: classes of the corpus mean span) gives the head set used until the next
refresh. Before the first refresh the classes are per sequence. :class:`HeadRefresh` holds that
state, the change of each refresh (for the ``rhythm/heads_*`` metrics) and its checkpoint form;
it is engine-neutral (the TRL trainer drives it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attnrhythm.config import AnalysisConfig
from attnrhythm.errors import AttnRhythmError
from attnrhythm.headsets import corpus_heads
from attnrhythm.method.rhythm import HeadClasses

STATE_FILE = "rhythm_heads.json"
STATE_FORMAT = "attnrhythm-head-refresh"


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def head_set_change(old: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    """Jaccard of the local and of the global sets, and the heads whose class changed.

    A head's class is local, global or neither; ``changed`` counts the heads (over both sets) whose
    class differs between ``old`` and ``new``.
    """
    old_local, old_global = ({tuple(h) for h in old[k]} for k in ("local", "global"))
    new_local, new_global = ({tuple(h) for h in new[k]} for k in ("local", "global"))

    def cls(head: tuple, local: set, glob: set) -> str:
        return "local" if head in local else "global" if head in glob else "none"

    heads = old_local | old_global | new_local | new_global
    changed = sum(cls(h, old_local, old_global) != cls(h, new_local, new_global) for h in heads)
    return {
        "local_jaccard": _jaccard(old_local, new_local),
        "global_jaccard": _jaccard(old_global, new_global),
        "changed": float(changed),
    }


def head_set_classes(heads: dict[str, Any] | None) -> tuple[list[int], HeadClasses] | None:
    """(analysed layers, classes with absolute layers) of a head set (``heads.json`` content); None: None."""
    if heads is None:
        return None
    pairs = {k: [(int(a), int(b)) for a, b in heads[k]] for k in ("local", "global")}
    return list(heads["layers"]), HeadClasses(local=pairs["local"], global_=pairs["global"])


def refreshed_config(config: AnalysisConfig, heads: dict[str, Any] | None) -> AnalysisConfig:
    """The credit's analysis settings of a ``refresh:K`` run with the head set ``heads`` in use.

    Before the first refresh (``heads`` None) the classes are per sequence; after it, ``heads``
    (``heads.json`` content) is the fixed head set. Settings without ``refresh:K`` are returned as
    they are.
    """
    if not config.heads_refresh:
        return config
    fixed = head_set_classes(heads)
    if fixed is None:
        return replace(config, heads=None, heads_file=None, heads_refresh=0)
    layers, classes = fixed
    return replace(config, heads=classes, heads_layers=layers, heads_file=None, heads_refresh=0)


class HeadRefresh:
    """The ``refresh:K`` head set of a training run (see the module docstring).

    ``add`` collects the spans of each analysed rollout with its step; ``due(step)`` says whether
    K steps have passed since the last refresh (and there are spans); ``refresh`` derives the new
    head set from the collected spans and clears them. ``heads`` is the ``heads.json`` content in
    use (None: per sequence), readable by ``--heads`` too.
    """

    def __init__(self, every: int, head_quantile: float) -> None:
        if every < 1:
            raise AttnRhythmError(f"bad refresh period {every}: it must be >= 1 steps")
        self.every = every
        self.head_quantile = head_quantile
        self.heads: dict[str, Any] | None = None
        self.refreshed_at = 0  # the step of the last refresh (0: the start of the run)
        self.refreshes = 0
        self.layers: list[int] | None = None
        self.spans: list[list[list[float]]] = []  # (L, H) spans collected since the last refresh

    def add(self, layers: list[int], spans: list[torch.Tensor | list[list[float]]]) -> None:
        """Collect the head spans (analysed layers ``layers``) of some analysed rollouts."""
        if spans and self.layers is not None and list(layers) != self.layers:
            raise AttnRhythmError(f"head spans of layers {layers} after {self.layers}: the layers changed")
        if spans:
            self.layers = list(layers)
        self.spans.extend(s.tolist() if isinstance(s, torch.Tensor) else s for s in spans)

    def due(self, step: int) -> bool:
        return step - self.refreshed_at >= self.every and bool(self.spans)

    def refresh(self, step: int) -> dict[str, float]:
        """Derive the head set from the collected spans; the change metrics (without a ``rhythm/`` prefix)."""
        records = [
            {"layers": self.layers, "heads": {"distance": d}, "head_quantile": self.head_quantile}
            for d in self.spans
        ]
        source = f"rollouts of steps {self.refreshed_at}-{step - 1}"
        new = corpus_heads(records, self.head_quantile, source=source)
        metrics = {"heads_traces": float(len(records))}
        if self.heads is not None:
            metrics.update({f"heads_{k}": v for k, v in head_set_change(self.heads, new).items()})
        self.heads, self.refreshed_at, self.refreshes, self.spans = new, step, self.refreshes + 1, []
        return metrics

    def classes(self) -> tuple[list[int], HeadClasses] | None:
        """(analysed layers, classes with absolute layers) of the head set in use; None: per sequence."""
        return head_set_classes(self.heads)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "every": self.every,
            "head_quantile": self.head_quantile,
            "refreshed_at": self.refreshed_at,
            "refreshes": self.refreshes,
            "heads": self.heads,
            "layers": self.layers,
            "spans": self.spans,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the state to ``directory/rhythm_heads.json`` (atomically)."""
        import os

        path = Path(directory) / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state()) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load(self, directory: str | Path) -> None:
        """Restore the state saved in ``directory`` (a checkpoint); one-line errors."""
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise AttnRhythmError(
                f"{directory} has no {STATE_FILE}: it was not saved by a heads refresh:K run; resume "
                "it with the heads setting it was trained with"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise AttnRhythmError(f"cannot read {path}: the checkpoint is damaged") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise AttnRhythmError(f"{path} is not a head refresh state: the checkpoint is damaged")
        if data.get("every") != self.every:
            raise AttnRhythmError(
                f"{path} was saved with heads refresh:{data.get('every')}, this run has "
                f"refresh:{self.every}: resume with the same heads setting"
            )
        self.heads = data["heads"]
        self.refreshed_at = int(data["refreshed_at"])
        self.refreshes = int(data["refreshes"])
        self.layers = data["layers"]
        self.spans = data["spans"]
