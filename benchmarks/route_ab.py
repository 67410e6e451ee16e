"""In-process A/B at one N: a plain SDPA forward, analyze on the fused route, analyze on the tile route.

Back to back, round by round (3 rounds), on the embedded model, one sequence of N random tokens
(response from N // 4), 2 torch threads; prints each run and the best wall / CPU time of each with
its ratio to the SDPA forward.

    python benchmarks/route_ab.py 2048
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput
from attnrhythm.models import load_model


def main(n: int, rounds: int = 3) -> None:
    torch.set_num_threads(2)
    model, _ = load_model("embedded")
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    analyzers = {route: Analyzer(model, AnalysisConfig(route=route)) for route in ("auto", "tile")}

    def sdpa() -> None:
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            model(input_ids=ids[None], use_cache=False)

    def analyze(route: str) -> Callable[[], None]:
        def run() -> None:
            model.set_attn_implementation("attnrhythm")
            analyzers[route].analyze([TraceInput(ids.tolist(), n // 4)])

        return run

    runs = {"sdpa": sdpa, "fused": analyze("auto"), "tile": analyze("tile")}
    for fn in runs.values():  # warm-up
        fn()
    best = {name: (float("inf"), float("inf")) for name in runs}
    for i in range(rounds):
        for name, fn in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            print(f"round {i} {name}: wall {wall:.2f} s, cpu {cpu:.2f} s", flush=True)
    base_wall, base_cpu = best["sdpa"]
    for name, (wall, cpu) in best.items():
        print(
            f"N={n} {name}: wall {wall:.2f} s ({wall / base_wall:.2f}x), "
            f"cpu {cpu:.2f} s ({cpu / base_cpu:.2f}x)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2048)
