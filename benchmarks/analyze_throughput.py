"""Throughput of ``attnrhythm analyze --input``: 1 process vs 2 torchrun ranks on CPU, same traces,
and the padding share of the batch plan without and with length bucketing.

    PYTHONPATH=src python benchmarks/analyze_throughput.py --traces 32 --model embedded

Each run is the whole command (model load included), one thread per process (torchrun's
default; the single process is pinned to one thread too, so the 2-rank run uses twice the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "so we add the two numbers and then divide by three to get the answer which is five".split()


def corpus(path: Path, n: int, lo: int, hi: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            response = " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))
            line = {"id": f"b{i}", "prompt": "Solve: 3 + 4 * 2 = ?", "response": response}
            fh.write(json.dumps(line) + "\n")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--traces", type=int, default=32)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()

    from attnrhythm.models import load_model
    from attnrhythm.records import read_inputs
    from attnrhythm.runner import GenerationConfig, padding_share, plan_batches, prepare

    work_dir = Path(tempfile.mkdtemp(prefix="attnrhythm-bench-"))
    src = work_dir / "in.jsonl"
    corpus(src, args.traces, args.min_words, args.max_words)
    _, tokenizer = load_model(args.model)
    errors: list[str] = []
    gen = GenerationConfig()
    work = prepare(read_inputs(src), tokenizer, chat=True, generation=gen, max_len=None, errors=errors)
    tokens = sum(w.length for w in work)
    plain = padding_share(plan_batches(work, args.batch_size, bucket=False))
    bucketed = padding_share(plan_batches(work, args.batch_size))
    print(f"{len(work)} traces, {tokens} tokens, batch size {args.batch_size}")
    print(f"padding share: {100 * plain:.1f}% in input order, {100 * bucketed:.1f}% bucketed by length")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    analyze = ["-m", "attnrhythm", "analyze", "--model", args.model, "-i", str(src),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    runs = {
        "1 process": [sys.executable, *analyze, "-o", str(work_dir / "one.jsonl")],
        "2 processes (torchrun)": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   *analyze, "-o", str(work_dir / "two.jsonl")],  # fmt: skip
    }
    for name, cmd in runs.items():
        seconds = timed(cmd, env)
        rate = f"{len(work) / seconds:6.2f} traces/s  {tokens / seconds:8.0f} tokens/s"
        print(f"{name:24s} {seconds:7.1f} s  {rate}")
    same = (work_dir / "one.jsonl").read_bytes() == (work_dir / "two.jsonl").read_bytes()
    print(f"records equal: {same}")


if __name__ == "__main__":
    main()
