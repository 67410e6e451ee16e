"""Keep vs exclude sinks on the same responses: head classes, roles, Table 1 positions, sink mass.

    python experiments/sinks_compare.py KEEP.jsonl EXCLUDE.jsonl [--margin 5]

KEEP and EXCLUDE are analysis records of the same token sequences (matched by ``key``), e.g. a
study's ``records.jsonl`` and the one `attnrhythm study perturb --records ... --sinks exclude`
writes. Prints one JSON object: per-response means of the local/global heads that keep their
class, the Jaccard of the preplan and anchor sets, how often Table 1's high/low FAI positions
move, and the mean sink mass (from the exclude records, which carry ``heads.sink_mass``) of the
heads classed local/global under keep.
"""

from __future__ import annotations

import argparse
import json
import statistics

from attnrhythm.records import read_records
from attnrhythm.studies.perturb import pick_positions


def jaccard(a, b) -> float:
    a, b = (
        set(map(tuple, a)) if a and isinstance(a[0], list) else set(a),
        set(map(tuple, b)) if b and isinstance(b[0], list) else set(b),
    )  # noqa: E501
    return 1.0 if not a | b else len(a & b) / len(a | b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keep")
    parser.add_argument("exclude")
    parser.add_argument("--margin", type=int, default=5)
    args = parser.parse_args()
    keep = {str(r["key"]): r for r in read_records(args.keep)}
    rows = []
    for ex in read_records(args.exclude):
        k = keep.get(str(ex["key"]))
        if k is None:
            continue
        hk, he = k["heads"], ex["heads"]
        row = {
            "local_kept": len({tuple(h) for h in hk["local"]} & {tuple(h) for h in he["local"]})
            / len(hk["local"]),
            "global_kept": len({tuple(h) for h in hk["global"]} & {tuple(h) for h in he["global"]})
            / len(hk["global"]),
            "preplan_jaccard": jaccard(k["roles"]["preplan"], ex["roles"]["preplan"]),
            "anchor_jaccard": jaccard(k["roles"]["anchor"], ex["roles"]["anchor"]),
        }
        pk, pe = (
            pick_positions(k["metrics"]["fai"], args.margin),
            pick_positions(ex["metrics"]["fai"], args.margin),
        )
        if not isinstance(pk, str) and not isinstance(pe, str):
            row["high_same"] = float(pk[0] == pe[0])
            row["low_same"] = float(pk[1] == pe[1])
        mass = he.get("sink_mass")
        if mass is not None:
            pos = {layer: i for i, layer in enumerate(ex["layers"])}
            row["sink_local"] = statistics.mean(mass[pos[a]][h] for a, h in hk["local"])
            row["sink_global"] = statistics.mean(mass[pos[a]][h] for a, h in hk["global"])
            row["sink_all"] = statistics.mean(v for layer in mass for v in layer)
        rows.append(row)
    keys = sorted({key for row in rows for key in row})
    summary = {key: statistics.mean(row[key] for row in rows if key in row) for key in keys}
    summary["responses"] = len(rows)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
