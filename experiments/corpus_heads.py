"""Per-sequence vs corpus head classes on the same responses (the numbers of docs/heads.md).

    attnrhythm heads STUDY/records.jsonl --out heads.json
    # the same prompt/response pairs analysed twice: per sequence, and with --heads heads.json
    attnrhythm analyze --input pairs.jsonl --out perseq.jsonl
    attnrhythm analyze --input pairs.jsonl --out corpus.jsonl --heads heads.json
    python experiments/corpus_heads.py perseq.jsonl corpus.jsonl heads.json

Prints how often each corpus head keeps its class, how many of a trace's per-sequence heads are
corpus heads of the same class, and the Jaccard overlap of each role between the two analyses.
"""

from __future__ import annotations

import json
import statistics
import sys


def _load(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return {r["key"]: r for r in records}


def _jaccard(a: list[int], b: list[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _summary(values: list[float]) -> str:
    return (
        f"mean {statistics.mean(values):.3f}, median {statistics.median(values):.3f}, min {min(values):.3f}"
    )


def main(perseq_path: str, corpus_path: str, heads_path: str) -> None:
    perseq, corpus = _load(perseq_path), _load(corpus_path)
    with open(heads_path, encoding="utf-8") as fh:
        heads = json.load(fh)
    keys = [k for k in perseq if k in corpus]
    sets = {name: {tuple(h) for h in heads[name]} for name in ("local", "global")}
    overlap: dict[str, list[float]] = {"local": [], "global": []}
    roles: dict[str, list[float]] = {r: [] for r in ("preplan", "anchor", "dominated", "intro")}
    for key in keys:
        a, b = perseq[key], corpus[key]
        for name in overlap:
            own = {tuple(h) for h in a["heads"][name]}
            overlap[name].append(len(own & sets[name]) / len(sets[name]))
        for role in roles:
            roles[role].append(_jaccard(a["roles"][role], b["roles"][role]))
    print(f"{len(keys)} traces in both files")
    for name, values in overlap.items():
        print(f"per-trace {name} heads that are corpus {name} heads: {_summary(values)}")
    for role, values in roles.items():
        print(f"Jaccard of {role} tokens, per-sequence vs corpus heads: {_summary(values)}")
    pos = {layer: i for i, layer in enumerate(heads["layers"])}
    stability = heads["stability"]
    for name in ("local", "global"):
        shares = sorted(stability[name][pos[layer]][h] for layer, h in heads[name])
        print(
            f"corpus {name} heads, share of traces keeping the class: "
            + ", ".join(f"{100 * s:.0f}%" for s in shares)
        )
        others = sorted(
            (
                (stability[name][pos[layer]][h], layer, h)
                for layer in heads["layers"]
                for h in range(heads["heads"])
                if (layer, h) not in sets[name] and stability[name][pos[layer]][h] > 0
            ),
            reverse=True,
        )
        print(
            f"other heads that are {name} in some traces: {len(others)}; most often: "
            + ", ".join(f"L{layer}H{h} {100 * s:.0f}%" for s, layer, h in others[:5])
        )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python experiments/corpus_heads.py PERSEQ.jsonl CORPUS.jsonl HEADS.json")
    main(*sys.argv[1:])
