"""CPU experiment: does attention-rhythm credit change what a short GRPO run teaches a small model?

Trains the embedded model (SmolLM2-135M-Instruct) on the chosen task (see experiments/README.md)
for every strategy x seed, with the same prompts in the same order for every strategy of a seed,
and measures held-out accuracy before (the base model, once per seed) and after each run.

    python experiments/cpu_credit.py --out experiments/results/cpu_credit

Everything lands in ``--out``:

* ``results.jsonl``: one record per evaluation (``kind: base``) and per run (``kind: run``),
  written as each finishes (resumable: a rerun skips finished keys; an interrupted run restarts);
* ``runs/<strategy>-seed<seed>/``: each training run (metrics.jsonl, reward_curve.png, final/);
* ``summary.md``: mean +- std over seeds per strategy; ``summary.png``: reward curves and accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ATTNRHYTHM_CACHE", str(Path.home() / ".cache" / "attnrhythm"))

from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.records import ResumableWriter, iter_jsonl  # noqa: E402

# The task and training settings chosen by measurement (experiments/README.md, "Choosing the task").
TASK = "arithmetic"
# single-digit sums (81 distinct problems), answer = the boxed number, else "answer is N", else the last
# number: SmolLM2-135M-Instruct starts at pass@1 0.71 (greedy) and avg@4 0.22 (T = 1.0) on it.
TASK_OPTIONS: dict[str, Any] = {
    "n_terms": [2, 2],
    "min_operand": 1,
    "max_operand": 9,
    "ops": "+",
    "boxed_only": False,
}
TRAIN = dict(
    learning_rate=5e-5,  # 2e-5 barely moved the policy in 12 steps (smoke run); 5e-5 is what was measured
    num_generations=4,
    per_device_train_batch_size=8,  # 2 prompts x 4 completions per step
    max_completion_length=48,
    temperature=1.0,
    n_train=32,  # of the 81 problems; evaluation uses the others
    data_seed=0,  # the same training pool for every seed; the seed changes the order and sampling
    save_steps=0,
)
STRATEGIES = ("none", "local", "global", "coupled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("experiments/results/cpu_credit"))
    p.add_argument("--steps", type=int, default=12, help="optimiser steps per run")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of credit strategies")
    p.add_argument(
        "--n-eval",
        type=int,
        default=81,
        help="problems drawn for evaluation before the training ones are dropped (81 = all; 49 remain)",
    )
    p.add_argument("--samples", type=int, default=4, help="K sampled completions per problem (avg@K)")
    p.add_argument("--eval-max-new-tokens", type=int, default=48)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--model", default="embedded", help="the policy (default: SmolLM2-135M-Instruct)")
    p.add_argument("--max-completion-length", type=int, default=TRAIN["max_completion_length"])
    p.add_argument("--learning-rate", type=float, default=TRAIN["learning_rate"])
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; use 1 when other jobs share the cores)",
    )
    p.add_argument(
        "--rhythm-option",
        action="append",
        default=[],
        help="KEY=VALUE (YAML) for RhythmCreditConfig, e.g. window=4 (repeatable)",
    )
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AttnRhythmError(f"bad --seeds {text!r}: pass a comma list of integers like 0,1,2") from None


def _rhythm_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise AttnRhythmError(f"bad --rhythm-option {item!r}: write KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _eval(model_spec: str, settings: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from attnrhythm.models import load_model
    from attnrhythm.train.evaluate import EVAL_SEED, evaluate
    from attnrhythm.train.runs import training_prompts

    model, tokenizer = load_model(model_spec)
    started = time.perf_counter()
    result = evaluate(
        model,
        tokenizer,
        settings.make_task(),
        n=args.n_eval,
        samples=args.samples,
        temperature=1.0,
        seed=seed,
        max_new_tokens=args.eval_max_new_tokens,
        batch_size=args.eval_batch_size,
        eval_seed=EVAL_SEED,
        exclude_prompts=training_prompts(settings),
    )
    result.pop("problems")
    result["seconds"] = time.perf_counter() - started
    return result


def run_all(args: argparse.Namespace) -> Path:
    from attnrhythm.train.runs import TrainSettings, train

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    seeds = _ints(args.seeds)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.steps < 1:
        raise AttnRhythmError(f"bad --steps {args.steps}: it must be >= 1")
    if not seeds or not strategies:
        raise AttnRhythmError("nothing to run: pass --seeds and --strategies")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rhythm_options = _rhythm_options(args.rhythm_option)
    config = {
        **TRAIN,
        "max_completion_length": args.max_completion_length,
        "learning_rate": args.learning_rate,
    }

    def settings_for(strategy: str, seed: int) -> TrainSettings:
        return TrainSettings(
            task=TASK,
            task_options=dict(TASK_OPTIONS),
            strategy=strategy,
            model=args.model,
            steps=args.steps,
            seed=seed,
            output_dir=str(out / "runs" / f"{strategy}-seed{seed}"),
            rhythm_options=rhythm_options,
            **config,
        )

    for strategy in strategies:  # validate everything before the first hour starts
        settings_for(strategy, seeds[0])
    common = {"n_eval": args.n_eval, "samples": args.samples, "steps": args.steps, "model": args.model}
    with ResumableWriter(out / "results.jsonl") as writer:
        if writer.resumed:
            print(f"resuming: {writer.resumed} results already in {out / 'results.jsonl'}", flush=True)
        for seed in seeds:
            key = f"base-seed{seed}"
            if not writer.done(key):
                print(f"[{key}] evaluating the base model ...", flush=True)
                result = _eval(args.model, settings_for("none", seed), args, seed)
                writer.write({"key": key, "kind": "base", "seed": seed, **common, "eval": result})
                print(f"[{key}] pass@1 {result['pass@1']:.3f} avg@K {result['avg@K']:.3f}", flush=True)
            for strategy in strategies:
                key = f"{strategy}-seed{seed}"
                if writer.done(key):
                    continue
                settings = settings_for(strategy, seed)
                run_dir = Path(settings.output_dir)
                if run_dir.exists():  # an interrupted run: start it again
                    shutil.rmtree(run_dir)
                print(f"[{key}] training {args.steps} steps ...", flush=True)
                started = time.perf_counter()

                def progress(step: int, total: int, key: str = key, started: float = started) -> None:
                    elapsed = time.perf_counter() - started
                    print(f"[{key}] step {step}/{total} ({elapsed:.0f}s)", flush=True)

                summary = train(settings, progress=progress)
                train_seconds = time.perf_counter() - started
                result = _eval(summary["final"], settings, args, seed)
                records = summary["metrics"]
                writer.write(
                    {
                        "key": key,
                        "kind": "run",
                        "strategy": strategy,
                        "seed": seed,
                        **common,
                        "eval": result,
                        "reward_curve": [r.get("reward_mean") for r in records],
                        "accuracy_curve": [r.get("accuracy") for r in records],
                        "seconds_per_step": summary["seconds_per_step"],
                        "rhythm_seconds_per_step": summary["rhythm_seconds_per_step"],
                        "train_seconds": train_seconds,
                        "settings": settings.to_dict(),
                    }
                )
                print(
                    f"[{key}] done in {train_seconds:.0f}s ({summary['seconds_per_step']:.1f} s/step): "
                    f"pass@1 {result['pass@1']:.3f} avg@K {result['avg@K']:.3f}",
                    flush=True,
                )
    write_summary(out, strategies)
    return out


# ----------------------------------------------------------------------------------------------
# summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], digits: int = 3, pct: bool = False) -> str:
    mean, std = _mean_std(values)
    if mean != mean:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    return f"{mean * scale:.{digits}f}{unit} ± {std * scale:.{digits}f}{unit}"


def write_summary(out: Path, strategies: list[str] | None = None) -> Path:
    """``summary.md`` and ``summary.png`` from ``results.jsonl``."""
    records = list(iter_jsonl(out / "results.jsonl"))
    base = {r["seed"]: r["eval"] for r in records if r["kind"] == "base"}
    runs = [r for r in records if r["kind"] == "run"]
    order = strategies or list(STRATEGIES)
    order = [s for s in order if any(r["strategy"] == s for r in runs)]
    none_sps = {r["seed"]: r["seconds_per_step"] for r in runs if r["strategy"] == "none"}

    lines = [
        "# CPU credit experiment",
        "",
        f"Task: `{TASK}` {json.dumps(TASK_OPTIONS)}; model: {runs[0]['model'] if runs else '-'}; "
        f"steps per run: {runs[0]['steps'] if runs else '-'}; held-out problems: "
        f"{runs[0]['eval']['n'] if runs else '-'}, K = {runs[0]['eval']['K'] if runs else '-'}.",
        "",
        "Accuracy = reward 1.0 on held-out problems; pass@1 greedy, avg@K over K samples at T = 1.0. "
        "Values are mean ± std over seeds; delta = after - before (base model, same seed).",
        "",
    ]
    base_p1 = [e["pass@1"] for e in base.values()]
    base_avg = [e["avg@K"] for e in base.values()]
    lines += [
        f"Base model: pass@1 {_fmt(base_p1)}, avg@K {_fmt(base_avg)} ({len(base)} seed(s)).",
        "",
        "| strategy | seeds | pass@1 after | Δ pass@1 | avg@K after | Δ avg@K | final train reward "
        "| s/step | credit overhead | credit s / step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy in order:
        rows = [r for r in runs if r["strategy"] == strategy]
        p1 = [r["eval"]["pass@1"] for r in rows]
        avg = [r["eval"]["avg@K"] for r in rows]
        d_p1 = [r["eval"]["pass@1"] - base[r["seed"]]["pass@1"] for r in rows if r["seed"] in base]
        d_avg = [r["eval"]["avg@K"] - base[r["seed"]]["avg@K"] for r in rows if r["seed"] in base]
        tail = [statistics.fmean([v for v in r["reward_curve"][-3:] if v is not None] or [0.0]) for r in rows]
        sps = [r["seconds_per_step"] for r in rows]
        overhead = [
            r["seconds_per_step"] / none_sps[r["seed"]] - 1.0
            for r in rows
            if none_sps.get(r["seed"]) and strategy != "none"
        ]
        share = [r["rhythm_seconds_per_step"] / r["seconds_per_step"] for r in rows if r["seconds_per_step"]]
        lines.append(
            f"| {strategy} | {len(rows)} | {_fmt(p1)} | {_fmt(d_p1)} | {_fmt(avg)} | {_fmt(d_avg)} "
            f"| {_fmt(tail)} | {_fmt(sps, 1)} | {_fmt(overhead, 1, pct=True) if overhead else '-'} "
            f"| {_fmt(share, 1, pct=True)} |"
        )
    lines += [
        "",
        "credit overhead = s/step(strategy) / s/step(none, same seed) - 1 (includes noise from "
        "different completion lengths); credit s / step s = wall time of the credit forward over the "
        "step's wall time. Final train reward: mean training reward over the last 3 steps.",
        "",
    ]
    md = out / "summary.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    _plot(out / "summary.png", runs, base, order)
    print(md.read_text(encoding="utf-8"), flush=True)
    return md


def _plot(path: Path, runs: list[dict[str, Any]], base: dict[int, dict], order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for strategy in order:
        curves = [r["reward_curve"] for r in runs if r["strategy"] == strategy]
        length = min(len(c) for c in curves)
        data = np.array([[v if v is not None else np.nan for v in c[:length]] for c in curves], dtype=float)
        mean = np.nanmean(data, axis=0)
        steps = np.arange(1, length + 1)
        left.plot(steps, mean, marker="o", ms=3, label=strategy)
        if len(curves) > 1:
            std = np.nanstd(data, axis=0)
            left.fill_between(steps, mean - std, mean + std, alpha=0.12)
    left.set_xlabel("step")
    left.set_ylabel("training reward (mean over seeds)")
    left.set_title("reward curves")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    labels = ["base", *order]
    values = [[e["avg@K"] for e in base.values()]] + [
        [r["eval"]["avg@K"] for r in runs if r["strategy"] == s] for s in order
    ]
    greedy = [[e["pass@1"] for e in base.values()]] + [
        [r["eval"]["pass@1"] for r in runs if r["strategy"] == s] for s in order
    ]
    x = np.arange(len(labels))
    for offset, data, name in ((-0.2, greedy, "pass@1 (greedy)"), (0.2, values, "avg@K")):
        means = [np.mean(v) if v else np.nan for v in data]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in data]
        right.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, label=name)
    right.set_xticks(x, labels)
    right.set_ylabel("held-out accuracy")
    right.set_title("held-out accuracy (mean ± std over seeds)")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run_all(args)
    except AttnRhythmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
