"""Fixed head sets: the ``--heads`` file, and corpus head sets derived from many records.

docs/method.md section 2 classifies heads per sequence by default. A *corpus* head set applies the
same rule once, to the span d[l,h] averaged over a corpus of traces (``attnrhythm heads``), and
records per head how often the per-sequence rule agreed (its stability). The file it writes
(schema below, also in docs/heads.md) is read back by ``--heads`` in analyze, train and the studies.

``heads.json`` (``"format": "attnrhythm-heads"``, ``"version": 1``)::

    layers          int[]              analysed layers (absolute), the rows of the matrices below
    heads           int                query heads per layer
    head_quantile   float              the quantile of the class rule
    traces          int                records averaged
    distance        float[][]          corpus mean span d[l,h] (mean over traces, each trace weight 1)
    distance_std    float[][]          standard deviation of d[l,h] over the traces
    local, global   [layer, head][]    classes of the corpus mean (the rule of docs/method.md section 2)
    stability       {local, global: float[][], receiver: float[][] (when the records have them)}
                    share of traces whose own per-sequence class (the same rule on that trace's
                    d[l,h]) puts the head in H_loc / H_glob / among the receiver heads
    keeps_class     {local, global: float}  mean stability of the corpus local (global) heads
    receiver_traces int                records that carry receiver heads (0: none)
    source          str                where the records came from

Only ``local`` and ``global`` are required when reading; a hand-written
``{"local": [[l, h], ...], "global": [...]}`` and an analyze record are accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.rhythm import HeadClasses, classify_heads
from attnrhythm.records import check_file_target, write_text_atomic
from attnrhythm.schema import record_floats

FORMAT = "attnrhythm-heads"
VERSION = 1


# ------------------------------------------------------------------ reading --heads files


def _pairs(value: Any, name: str, path: Path) -> list[tuple[int, int]]:
    bad = AttnRhythmError(
        f"heads file {path}: '{name}' must be a list of [layer, head] pairs of integers >= 0"
    )
    if not isinstance(value, list):
        raise bad
    pairs = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item)
        ):
            raise bad
        pairs.append((int(item[0]), int(item[1])))
    if not pairs:
        raise AttnRhythmError(f"heads file {path} has an empty {name} head list")
    return pairs


def read_heads_file(path: str | Path) -> tuple[list[int], HeadClasses]:
    """(analysed layers, classes with absolute layers) of a ``--heads`` file; one-line errors.

    Accepts a ``heads.json`` of ``attnrhythm heads`` (its ``layers`` become the analysed layers, so
    records analysed with it have the same head picture), a hand-written JSON object with ``local``
    and ``global`` lists (the layers they name are analysed), or one record of ``analyze``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise AttnRhythmError(
            f"heads file {p} does not exist: pass a JSON file with local/global heads"
        ) from None
    except IsADirectoryError:
        raise AttnRhythmError(
            f"heads file {p} is a directory: pass a JSON file with local/global heads"
        ) from None
    except OSError as err:
        raise AttnRhythmError(f"cannot read heads file {p} ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise AttnRhythmError(
            f"heads file {p} is not UTF-8 (byte {err.start + 1}): save it as UTF-8"
        ) from None
    except json.JSONDecodeError as err:
        raise AttnRhythmError(f"heads file {p} is not valid JSON ({err.msg}, line {err.lineno})") from None
    except (RecursionError, ValueError):
        raise AttnRhythmError(f"heads file {p} is not valid JSON") from None
    if not isinstance(data, dict):
        raise AttnRhythmError(f"heads file {p} must be a JSON object with 'local' and 'global' lists")
    layers_field = data.get("layers")
    if isinstance(data.get("heads"), dict):  # an analyze record
        data = data["heads"]
    if "local" not in data or "global" not in data:
        raise AttnRhythmError(f"heads file {p} needs 'local' and 'global' lists of [layer, head] pairs")
    local = _pairs(data["local"], "local", p)
    glob = _pairs(data["global"], "global", p)
    used = sorted({h[0] for h in local + glob})
    if layers_field is None:
        return used, HeadClasses(local=local, global_=glob)
    if not isinstance(layers_field, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers_field
    ):
        raise AttnRhythmError(f"heads file {p}: 'layers' must be a list of layer indices >= 0")
    missing = [layer for layer in used if layer not in layers_field]
    if missing:
        raise AttnRhythmError(
            f"heads file {p} names heads of layer {missing[0]}, which is not in its 'layers' {layers_field}"
        )
    return sorted(set(layers_field)), HeadClasses(local=local, global_=glob)


# ------------------------------------------------------------------ corpus head sets


def _distance(record: Any, i: int, source: str) -> tuple[list[int], torch.Tensor]:
    where = f"{source} record #{i}"
    if not isinstance(record, dict):
        raise AttnRhythmError(f"{where} is not a JSON object: pass records written by `attnrhythm analyze`")
    layers, heads = record.get("layers"), record.get("heads")
    distance = heads.get("distance") if isinstance(heads, dict) else None
    try:
        matrix = torch.tensor(distance, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        matrix = None
    if (
        not isinstance(layers, list)
        or matrix is None
        or matrix.ndim != 2
        or matrix.shape[0] != len(layers)
        or matrix.shape[1] < 1
        or not torch.isfinite(matrix).all()
    ):
        raise AttnRhythmError(
            f"{where} lacks a valid 'layers' and 'heads.distance' (one row of spans per layer): "
            "pass records written by `attnrhythm analyze`"
        )
    return [int(x) for x in layers], matrix


def _mask(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.float64)
    for a, b in pairs:
        mask[a, b] = 1.0
    return mask


def corpus_heads(records: list[Any], head_quantile: float | None = None, source: str = "") -> dict[str, Any]:
    """The ``heads.json`` content of a corpus of analyze records (see the module docstring).

    ``head_quantile`` None: the records' own (they must agree). All records must have the same
    analysed layers and heads per layer.
    """
    if not records:
        raise AttnRhythmError(f"{source or 'the records'} has no records: analyse some traces first")
    layers, first = _distance(records[0], 0, source)
    quantiles = set()
    matrices = []
    receiver_masks = []
    for i, record in enumerate(records):
        rec_layers, matrix = _distance(record, i, source)
        if rec_layers != layers or matrix.shape != first.shape:
            raise AttnRhythmError(
                f"{source} record #{i} has layers {rec_layers} x {matrix.shape[1]} heads, but record #0 "
                f"has {layers} x {first.shape[1]}: a corpus head set needs records analysed with the "
                "same --layers"
            )
        matrices.append(matrix)
        if isinstance(record.get("head_quantile"), int | float):
            quantiles.add(float(record["head_quantile"]))
        receivers = record["heads"].get("receiver")
        if isinstance(receivers, list) and receivers:
            pos = {layer: k for k, layer in enumerate(layers)}
            try:
                pairs = [(pos[int(a)], int(b)) for a, b in receivers]
                receiver_masks.append(_mask(pairs, tuple(first.shape)))
            except (KeyError, TypeError, ValueError, IndexError):
                raise AttnRhythmError(f"{source} record #{i} has malformed heads.receiver pairs") from None
    if head_quantile is None:
        if len(quantiles) > 1:
            raise AttnRhythmError(
                f"{source} mixes head quantiles {sorted(quantiles)}: pass --head-quantile to choose one"
            )
        head_quantile = quantiles.pop() if quantiles else 0.3
    stack = torch.stack(matrices)  # (traces, L, H)
    mean = stack.mean(0)
    corpus = classify_heads(mean, head_quantile)  # also validates the quantile
    shape = tuple(mean.shape)
    local_share = torch.zeros(shape, dtype=torch.float64)
    global_share = torch.zeros(shape, dtype=torch.float64)
    for matrix in matrices:
        own = classify_heads(matrix, head_quantile)
        local_share += _mask(own.local, shape)
        global_share += _mask(own.global_, shape)
    local_share /= len(matrices)
    global_share /= len(matrices)

    def absolute(pairs: list[tuple[int, int]]) -> list[list[int]]:
        return [[layers[a], b] for a, b in pairs]

    def keeps(pairs: list[tuple[int, int]], share: torch.Tensor) -> float:
        return float(sum(share[a, b] for a, b in pairs) / len(pairs))

    stability: dict[str, Any] = {
        "local": [record_floats(row) for row in local_share.tolist()],
        "global": [record_floats(row) for row in global_share.tolist()],
    }
    if receiver_masks:
        receiver_share = torch.stack(receiver_masks).mean(0)
        stability["receiver"] = [record_floats(row) for row in receiver_share.tolist()]
    return {
        "format": FORMAT,
        "version": VERSION,
        "layers": layers,
        "heads": int(shape[1]),
        "head_quantile": head_quantile,
        "traces": len(matrices),
        "distance": [record_floats(row) for row in mean.tolist()],
        "distance_std": [record_floats(row) for row in stack.std(0, unbiased=False).tolist()],
        "local": absolute(corpus.local),
        "global": absolute(corpus.global_),
        "stability": stability,
        "keeps_class": {
            "local": record_floats([keeps(corpus.local, local_share)])[0],
            "global": record_floats([keeps(corpus.global_, global_share)])[0],
        },
        "receiver_traces": len(receiver_masks),
        "source": source,
    }


def load_corpus_heads(path: str | Path) -> dict[str, Any]:
    """A ``heads.json`` written by ``attnrhythm heads`` (with its stability), checked; one-line errors."""
    p = Path(path)
    read_heads_file(p)  # the same reading errors as --heads
    data = json.loads(p.read_bytes().decode("utf-8"))
    check_corpus_heads(data, str(p))
    return data


def check_corpus_heads(data: Any, where: str = "head set") -> None:
    """Raise a one-line error unless ``data`` has the matrices of a corpus head set."""
    bad = AttnRhythmError(
        f"{where} is not a corpus head set (layers, distance, stability): write one with "
        "`attnrhythm heads RECORDS.jsonl --out heads.json`"
    )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad
    layers, stability = data.get("layers"), data.get("stability")
    if not isinstance(layers, list) or not isinstance(stability, dict):
        raise bad
    if not isinstance(data.get("traces"), int) or not isinstance(data.get("keeps_class"), dict):
        raise bad
    for name in ("local", "global"):
        pairs = data.get(name)
        if not isinstance(pairs, list) or not all(isinstance(h, list) and len(h) == 2 for h in pairs):
            raise bad
    matrices = [data.get("distance"), stability.get("local"), stability.get("global")]
    if "receiver" in stability:
        matrices.append(stability["receiver"])
    for matrix in matrices:
        if not isinstance(matrix, list) or len(matrix) != len(layers):
            raise bad
        if not all(isinstance(row, list) and all(isinstance(x, int | float) for x in row) for row in matrix):
            raise bad


def write_heads_file(data: dict[str, Any], out: str | Path) -> Path:
    """Write a head set as JSON atomically: one line per matrix row and per [layer, head] pair."""
    import re

    out = check_file_target(out, "heads.json")
    text = json.dumps(data, indent=1, ensure_ascii=False)
    # innermost lists (numbers only) on one line each
    text = re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    return write_text_atomic(out, text + "\n")
