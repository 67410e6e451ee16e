"""Time and peak memory of attnrhythm's streaming analysis against a plain forward and the eager route.

Routes, all on one sequence of random token ids (fixed seed), batch 1, fp32, CPU, 2 torch threads
(``--device cuda --dtype bfloat16`` for a GPU):

* ``a`` (sdpa):    ``model(input_ids)`` with SDPA attention, no_grad, use_cache=False. Like any normal
  forward it computes the full N x vocab logits.
* ``b`` (analyze): ``Analyzer(model, AnalysisConfig()).analyze([TraceInput(ids, response_start=N//4)])``,
  the streaming analysis: one forward (the 5 default mid layers on the fused route: kernel output +
  log-sum-exp, band scan, one reverse pass; ``ATTNRHYTHM_ROUTE=tile`` measures the tile route), the
  LM head in chunks over the response only, then metrics, roles and gamma.
* ``c`` (eager):   eager attention with ``output_attentions=True``, which returns layers x heads x N^2
  maps; only with ``--routes a,b,c``; skipped when its estimated memory exceeds ``--eager-limit-gib``.

Models: ``embedded`` (SmolLM2-135M-Instruct) for ``--ns``, and ``random``, the same LlamaConfig with
``max_position_embeddings`` raised to cover the largest N, randomly initialised, for ``--big-ns``.

Every run is a fresh subprocess (``--one ROUTE MODEL N``) so that its peak RSS is its own. The
child loads the model, warms the route up on a short input, records VmRSS (the baseline), resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``; on CUDA the peak is
``torch.cuda.max_memory_allocated`` instead), runs the route and reports wall time, process CPU
time (all threads; it moves less than wall time when other processes share the CPU), peak RSS
(VmHWM) and peak - baseline ("extra") as one JSON line. By default the ``--repeat`` runs of the
routes are interleaved, one child per run (a, b, a, b, a, b), so that a slow spell of a shared
machine (on this project's 2-core box the same forward drifts by up to 20% within minutes) hits
every route alike; ``--no-interleave`` runs one child per route with all its repeats. Best time
kept, highest peak kept. The driver prints one table row per (model, N) and, with ``--json``,
writes the rows to a file.

Usage (from the repository root, with the package installed)::

    python benchmarks/analysis_scaling.py                      # 2K-32K, best of 3 (long on a small CPU)
    python benchmarks/analysis_scaling.py --ns 2048,4096 --big-ns "" --json /tmp/rows.json
    python benchmarks/analysis_scaling.py --device cuda --dtype bfloat16   # on a GPU
    python benchmarks/analysis_scaling.py --one analyze embedded 2048 --repeat 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 2**30
MIB = 2**20
RESULT_TAG = "RESULT-JSON "
ROUTES = {"a": "sdpa", "b": "analyze", "c": "eager"}
ROUTE_LETTER = {name: letter for letter, name in ROUTES.items()}
MODELS = ("embedded", "random")
DEFAULT_NS = [2048, 4096, 8192]
DEFAULT_BIG_NS = [16384, 32768]
SEED = 0
WARMUP_TOKENS = 64
THREADS = 2
# The model shape (SmolLM2-135M): used for the eager estimate without loading anything.
N_LAYERS, N_HEADS = 30, 9
MODEL_BYTES = 134_515_008 * 4  # fp32 parameters (embedding tied with the LM head)


# --------------------------------------------------------------------------------------------------
# the child: one route, one model, one N


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is None:  # no procfs: the lifetime peak is the best we have
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM and ru_maxrss) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def _build_model(model_name: str, attn: str, n: int, device: str = "cpu", dtype: str = "float32") -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from attnrhythm.models import load_model, resolve_checkpoint

    if model_name == "embedded":
        model, _ = load_model("embedded")
    elif model_name == "random":
        config = AutoConfig.from_pretrained(str(resolve_checkpoint("embedded")))
        config.max_position_embeddings = max(32768, n)
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        raise SystemExit(f"unknown model {model_name!r}: use one of {', '.join(MODELS)}")
    model = model.to(device=device, dtype=getattr(torch, dtype))
    model.set_attn_implementation(attn)
    return model.eval()


def _make_route(route: str, model: Any) -> Any:
    """A function ids (1-D LongTensor) -> output that runs ``route`` once."""
    import torch

    if route == "sdpa":

        @torch.no_grad()
        def run(ids: torch.Tensor) -> Any:
            out = model(input_ids=ids[None], use_cache=False)
            return out.logits

        return run
    if route == "eager":

        @torch.no_grad()
        def run(ids: torch.Tensor) -> Any:
            out = model(input_ids=ids[None], use_cache=False, output_attentions=True)
            if len(out.attentions) != model.config.num_hidden_layers:
                raise RuntimeError(f"eager returned {len(out.attentions)} attention maps")
            return out.logits, out.attentions

        return run
    if route == "analyze":
        from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput

        analyzer = Analyzer(model, AnalysisConfig())

        def run(ids: torch.Tensor) -> Any:
            n = ids.shape[0]
            return analyzer.analyze([TraceInput(ids.tolist(), response_start=n // 4)])

        return run
    raise SystemExit(f"unknown route {route!r}: use one of {', '.join(ROUTES.values())}")


def run_one(
    route: str, model_name: str, n: int, repeat: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    cuda = device.startswith("cuda")
    record: dict[str, Any] = {
        "route": route,
        "model": model_name,
        "n": n,
        "repeat": repeat,
        "device": device,
        "dtype": dtype,
        "attention_route": os.environ.get("ATTNRHYTHM_ROUTE", "auto"),
    }
    t0 = time.perf_counter()
    model = _build_model(model_name, "eager" if route == "eager" else "sdpa", n, device, dtype)
    fn = _make_route(route, model)
    record["load_s"] = round(time.perf_counter() - t0, 3)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab, (n,), generator=gen).to(device)
    warm = torch.randint(0, vocab, (WARMUP_TOKENS,), generator=torch.Generator().manual_seed(SEED + 1))
    warm = warm.to(device)

    t0 = time.perf_counter()
    out = fn(warm)
    del out
    record["warmup_s"] = round(time.perf_counter() - t0, 3)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        record["peak_reset"] = True
    else:
        baseline = _rss_bytes()
        record["peak_reset"] = _reset_peak()
    times, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(ids)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        del out
        gc.collect()
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_bytes()
    record.update(
        status="ok",
        time_s=round(min(times), 3),
        times_s=[round(t, 3) for t in times],
        cpu_s=round(min(cpus), 3),
        cpus_s=[round(t, 3) for t in cpus],
        baseline_bytes=baseline,
        peak_bytes=peak,
        extra_bytes=max(0, peak - baseline),
        threads=torch.get_num_threads(),
    )
    return record


def child_main(route: str, model_name: str, n: int, repeat: int, device: str, dtype: str) -> int:
    try:
        record = run_one(route, model_name, n, repeat, device, dtype)
    except MemoryError:
        record = {"status": "oom", "detail": "MemoryError"}
    except RuntimeError as err:
        text = str(err)
        if "alloc" in text.lower() or "out of memory" in text.lower():
            record = {"status": "oom", "detail": text.splitlines()[0][:200]}
        else:
            raise
    print(RESULT_TAG + json.dumps(record), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# the driver


def eager_estimate_bytes(n: int) -> int:
    """Memory of the eager route: every layer's (heads, N, N) fp32 map kept, plus the weights."""
    return N_LAYERS * N_HEADS * n * n * 4 + MODEL_BYTES


def default_repeat(n: int) -> int:
    return 3


def run_child(
    route: str,
    model_name: str,
    n: int,
    repeat: int,
    timeout: float,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; never raises for timeouts, OOM kills or crashes."""
    script = os.path.abspath(__file__)
    cmd = [sys.executable, script, "--one", route, model_name, str(n), "--repeat", str(repeat)]
    cmd += ["--device", device, "--dtype", dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            record = json.loads(line[len(RESULT_TAG) :])
            record["wall_s"] = wall
            return record
    if proc.returncode in (-signal.SIGKILL, 137):  # the kernel's OOM killer
        return {"status": "oom", "wall_s": wall, "detail": "killed by SIGKILL"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    if any("alloc" in line.lower() or "memory" in line.lower() for line in tail):
        return {"status": "oom", "wall_s": wall, "detail": " | ".join(tail)[:300]}
    detail = " | ".join(tail)[:300]
    return {"status": "error", "wall_s": wall, "returncode": proc.returncode, "detail": detail}


def merge_runs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from several children of one (route, model, N): best times, highest peak."""
    failed = [rec for rec in records if rec.get("status") != "ok"]
    if failed:
        return failed[0]
    merged = dict(records[0])
    times = [t for rec in records for t in rec["times_s"]]
    cpus = [t for rec in records for t in rec["cpus_s"]]
    merged.update(
        time_s=min(times),
        times_s=times,
        cpu_s=min(cpus),
        cpus_s=cpus,
        repeat=len(times),
        peak_bytes=max(rec["peak_bytes"] for rec in records),
        extra_bytes=max(rec["extra_bytes"] for rec in records),
        wall_s=round(sum(rec.get("wall_s", 0.0) for rec in records), 1),
    )
    return merged


def _report(model_name: str, n: int, route: str, rec: dict[str, Any]) -> None:
    if rec["status"] == "ok":
        msg = (
            f"{rec['time_s']:.2f} s (runs {rec['times_s']}, cpu {rec['cpus_s']}), "
            f"peak {rec['peak_bytes'] / GIB:.2f} GiB, "
            f"extra {rec['extra_bytes'] / MIB:.0f} MiB"
        )
    else:
        msg = f"{rec['status']} {rec.get('detail', '')}".strip()
    print(
        f"  {model_name:8s} N={n:6d} {route:8s} {msg}  [wall {rec.get('wall_s', 0):.0f} s]",
        file=sys.stderr,
        flush=True,
    )


def _cell_time(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "-"
    if rec["status"] == "ok":
        return f"{rec['time_s']:.2f}"
    if rec["status"] == "skip":
        return f"skip (needs ~{rec['estimate_bytes'] / GIB:.0f} GiB)"
    return rec["status"]


def _cell_gib(rec: dict[str, Any] | None, key: str = "peak_bytes") -> str:
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return "skip" if rec["status"] == "skip" else rec["status"]
    return f"{rec[key] / GIB:.2f}"


def _cell_mib(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return "skip" if rec["status"] == "skip" else rec["status"]
    return f"{rec['extra_bytes'] / MIB:.0f}"


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, key: str) -> float | None:
    if not num or not den or num.get("status") != "ok" or den.get("status") != "ok" or not den[key]:
        return None
    return num[key] / den[key]


def _paired_ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    """Median over the interleaved rounds of (b's time / a's time) in the same round."""
    if not num or not den or num.get("status") != "ok" or den.get("status") != "ok":
        return None
    pairs = [b / a for b, a in zip(num["times_s"], den["times_s"]) if a > 0]
    if len(pairs) != len(num["times_s"]) or len(pairs) != len(den["times_s"]):
        return None
    return statistics.median(pairs)


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def build_rows(results: dict[tuple[str, int], dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for (model_name, n), by_route in results.items():
        a, b, c = (by_route.get(name) for name in ("sdpa", "analyze", "eager"))
        rows.append(
            {
                "model": model_name,
                "n": n,
                "a": a,
                "b": b,
                "c": c,
                "time_ratio_b_a": _ratio(b, a, "time_s"),
                "cpu_ratio_b_a": _ratio(b, a, "cpu_s"),
                "paired_ratio_b_a": _paired_ratio(b, a),
                "peak_ratio_b_a": _ratio(b, a, "peak_bytes"),
                "peak_ratio_c_b": _ratio(c, b, "peak_bytes"),
                "extra_ratio_b_a": _ratio(b, a, "extra_bytes"),
                "extra_ratio_c_b": _ratio(c, b, "extra_bytes"),
            }
        )
    return rows


TABLE_HEADER = [
    "model",
    "N",
    "time a (s)",
    "time b (s)",
    "time c (s)",
    "b/a time",
    "b/a cpu",
    "b/a paired",
    "peak a GiB",
    "peak b GiB",
    "peak c GiB",
    "b/a peak",
    "c/b peak",
    "extra a MiB",
    "extra b MiB",
    "extra c MiB",
]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    body = []
    for row in rows:
        a, b, c = row["a"], row["b"], row["c"]
        body.append(
            [
                row["model"],
                str(row["n"]),
                _cell_time(a),
                _cell_time(b),
                _cell_time(c),
                _fmt_ratio(row["time_ratio_b_a"]),
                _fmt_ratio(row["cpu_ratio_b_a"]),
                _fmt_ratio(row["paired_ratio_b_a"]),
                _cell_gib(a),
                _cell_gib(b),
                _cell_gib(c),
                _fmt_ratio(row["peak_ratio_b_a"]),
                _fmt_ratio(row["peak_ratio_c_b"]),
                _cell_mib(a),
                _cell_mib(b),
                _cell_mib(c),
            ]
        )
    widths = [max(len(r[i]) for r in [TABLE_HEADER, *body]) for i in range(len(TABLE_HEADER))]

    def fmt(cells: list[str]) -> str:
        parts = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return " | ".join(parts)

    rule = "-+-".join("-" * w for w in widths)
    return [fmt(TABLE_HEADER), rule, *(fmt(r) for r in body)]


def _find(rows: list[dict[str, Any]], n: int, model_name: str | None = None) -> dict[str, Any] | None:
    for row in rows:
        if row["n"] == n and (model_name is None or row["model"] == model_name):
            return row
    return None


def time_target(n: int) -> float:
    """The issue's target for analyze / plain forward: 1.10x up to 8K tokens, 1.15x beyond."""
    return 1.10 if n <= 8192 else 1.15


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL per measured N: (b)/(a) time within the target, (b) peak memory at most (a)'s."""
    lines = []
    for row in rows:
        tr, cr, pr = row["time_ratio_b_a"], row["cpu_ratio_b_a"], row["peak_ratio_b_a"]
        paired = row.get("paired_ratio_b_a")
        n, target = row["n"], time_target(row["n"])
        if tr is None:
            lines.append(f"MISSING: {row['model']} N={n}: (b) or (a) did not run")
            continue
        ok = "PASS" if tr <= target else "FAIL"
        lines.append(
            f"{ok}: {row['model']} N={n}: (b)/(a) wall time {_fmt_ratio(tr)} <= {target:.2f}x "
            f"(process CPU time {_fmt_ratio(cr)}; median of the interleaved pairs {_fmt_ratio(paired)})"
        )
        ok = "PASS" if pr is not None and pr <= 1.0 else "FAIL"
        lines.append(f"{ok}: {row['model']} N={n}: (b)/(a) peak memory {_fmt_ratio(pr)} <= 1.00x")
    return lines


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


def _parse_routes(text: str) -> list[str]:
    routes = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        name = ROUTES.get(item, item)
        if name not in ROUTE_LETTER:
            raise SystemExit(f"unknown route {item!r}: use a,b,c or {','.join(ROUTES.values())}")
        routes.append(name)
    return routes


def driver_main(args: argparse.Namespace) -> int:
    ns = _parse_ints(args.ns)
    big_ns = _parse_ints(args.big_ns)
    routes = _parse_routes(args.routes)
    plan = [("embedded", n) for n in ns] + [("random", n) for n in big_ns]
    limit = args.eager_limit_gib * GIB
    results: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    print(
        f"# attnrhythm analysis scaling: routes {','.join(routes)}; torch threads {THREADS}; "
        f"timeout {args.timeout:.0f} s per run; python {sys.version.split()[0]}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    for model_name, n in plan:
        by_route = results.setdefault((model_name, n), {})
        repeat = args.repeat or default_repeat(n)
        active = []
        for route in routes:
            if route == "eager" and eager_estimate_bytes(n) > limit:
                need = eager_estimate_bytes(n)
                by_route[route] = {"status": "skip", "estimate_bytes": need}
                print(
                    f"  {model_name:8s} N={n:6d} {route:8s} skip (needs ~{need / GIB:.0f} GiB)",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                active.append(route)
        # interleaved: a, b, a, b, ... one child per run, so that a slow spell of the machine
        # hits both routes alike; otherwise one child per route runs all its repeats
        rounds, per_child = (repeat, 1) if args.interleave else (1, repeat)
        runs: dict[str, list[dict[str, Any]]] = {route: [] for route in active}
        for _ in range(rounds):
            for route in active:
                rec = run_child(route, model_name, n, per_child, args.timeout, args.device, args.dtype)
                runs[route].append(rec)
                _report(model_name, n, route, rec)
        for route in active:
            by_route[route] = merge_runs(runs[route])
    rows = build_rows(results)
    print()
    print(
        "a = plain SDPA forward (full logits), b = attnrhythm Analyzer.analyze (5 mid layers, "
        f"route {os.environ.get('ATTNRHYTHM_ROUTE', 'auto')}), "
        "c = eager + output_attentions"
    )
    print(
        "time = best wall time; b/a cpu = ratio of process CPU times (less sensitive to other load); "
        "b/a paired = median over the interleaved rounds of b/a within a round; "
        "peak = peak RSS of the run's process; extra = peak - RSS after load and warm-up"
    )
    for text in table_lines(rows):
        print(text)
    print()
    for text in verdict_lines(rows):
        print(text)
    print(f"# total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        payload = {
            "threads": THREADS,
            "timeout_s": args.timeout,
            "eager_limit_gib": args.eager_limit_gib,
            "rows": rows,
            "verdicts": verdict_lines(rows),
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("ROUTE", "MODEL", "N"), help="run one measurement (child)")
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)), help="lengths for the embedded model")
    parser.add_argument(
        "--big-ns", default=",".join(map(str, DEFAULT_BIG_NS)), help="lengths for the random-weight model"
    )
    parser.add_argument("--routes", default="a,b", help="routes: a (sdpa), b (analyze), c (eager)")
    parser.add_argument("--repeat", type=int, default=0, help="runs per measurement, best time kept (0: 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="model dtype: float32 or bfloat16")
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one child per run, routes alternating (a, b, a, b, ...); --no-interleave: one child per route",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    parser.add_argument("--eager-limit-gib", type=float, default=14.0, help="skip (c) above this estimate")
    parser.add_argument("--json", default=None, help="write the table rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.one:
        route, model_name, n = args.one
        route = ROUTES.get(route, route)
        n_int = int(n)
        return child_main(
            route, model_name, n_int, args.repeat or default_repeat(n_int), args.device, args.dtype
        )
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
