"""``attnrhythm train`` and ``attnrhythm eval``: GRPO with rhythm credit, and held-out accuracy.

Registered on the main typer app by :func:`register` (called at the end of :mod:`attnrhythm.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from attnrhythm.errors import AttnRhythmError

TaskOpt = typer.Option(
    None,
    "--task",
    "-t",
    help="countdown, wordproblems, arithmetic, math, or rg:NAME[:KEY=VALUE,...] for a reasoning-gym dataset.",
)
TaskOptionOpt = typer.Option(
    None,
    "--task-option",
    help="A task option KEY=VALUE (VALUE read as YAML), repeatable, e.g. --task-option n_numbers=[2,2].",
)


def _task_options(items: list[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AttnRhythmError(f"bad --task-option {item!r}: write it as KEY=VALUE, e.g. max_number=10")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AttnRhythmError(f"bad --task-option {item!r}: the value is not valid YAML") from None
    return options


def _heads_setting(value: str) -> str:
    """The --heads value as saved in the run's settings: a head set file becomes an absolute path."""
    from attnrhythm.train.config import parse_heads

    option = parse_heads(value)
    return str(Path(option.path).resolve()) if option.mode == "file" else value


def _write_json(path: Path, data: Any) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``eval`` commands to ``app``."""
    from attnrhythm.cli import options as opts
    from attnrhythm.cli.options import ModelOpt, console, out_console
    from attnrhythm.cli.options import progress as _progress

    @app.command()
    def train(
        config: Path = typer.Option(
            None, "--config", "-c", help="YAML file of training settings (field names)."
        ),
        task: str = TaskOpt,
        task_option: list[str] = TaskOptionOpt,
        strategy: str = typer.Option(
            None, "--strategy", help="none, random, entropy, local, global, coupled."
        ),
        selection: str = typer.Option(None, "--selection", help="top, or bottom for the ablation."),
        q: float = typer.Option(None, "--q", help="TopQ share of tokens selected as preplan / anchor."),
        amp: float = typer.Option(None, "--amp", help="Credit amplification of selected tokens."),
        alpha: float = typer.Option(None, "--alpha", help="Share of a dominated anchor's credit moved."),
        k: int = typer.Option(None, "--k", help="Look-back for the introductory token."),
        gamma_norm: str = typer.Option(None, "--gamma-norm", help=opts.GAMMA_NORM_HELP),
        shape: str = typer.Option(None, "--shape", help=opts.SHAPE_HELP),
        credit_forward: str = typer.Option(
            None,
            "--credit-forward",
            help="auto, fused (captured in TRL's old-logprob forward; needs --num-iterations > 1), separate.",
        ),
        num_iterations: int = typer.Option(
            None, "--num-iterations", help="Optimiser passes over each rollout batch (TRL's num_iterations)."
        ),
        heads: str = typer.Option(
            None,
            "--heads",
            help="sequence (per-sequence classes), a fixed head set FILE (heads.json of `attnrhythm "
            "heads`), or refresh:K (the corpus head set re-derived every K steps from recent rollouts).",
        ),
        model: str = typer.Option(
            None, "--model", "-m", help="'embedded', a checkpoint directory, a .gguf file or a cached hub id."
        ),
        steps: int = typer.Option(None, "--steps", help="Optimiser steps."),
        learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help="AdamW learning rate."),
        num_generations: int = typer.Option(None, "--num-generations", help="Completions per prompt."),
        batch_size: int = typer.Option(
            None, "--batch-size", help="Completions per step (a multiple of --num-generations)."
        ),
        max_completion_length: int = typer.Option(
            None, "--max-completion-length", help="Tokens generated per completion at most."
        ),
        temperature: float = typer.Option(None, "--temperature", help="Sampling temperature in training."),
        seed: int = typer.Option(None, "--seed", help="Trainer seed (data order, sampling)."),
        data_seed: int = typer.Option(None, "--data-seed", help="Seed of the training examples."),
        n_train: int = typer.Option(None, "--n-train", help="Training examples drawn from the task."),
        save_steps: int = typer.Option(None, "--save-steps", help="Checkpoint every N steps (0: none)."),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
        out: Path = typer.Option(None, "--out", "-o", help="Run directory (metrics, checkpoints, final/)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a --out holding a run."),
    ) -> None:
        """Train a policy with GRPO + attention-rhythm credit; writes metrics.jsonl, checkpoints, final/."""
        from attnrhythm.train.runs import SETTINGS_FILE, TrainSettings, check_run_dir
        from attnrhythm.train.runs import train as run_training

        if resume and overwrite:
            raise AttnRhythmError("pass either --resume or --overwrite, not both")
        if config is not None:
            settings = TrainSettings.from_yaml(config)
        elif resume and out is not None and (out / SETTINGS_FILE).is_file():
            settings = TrainSettings.from_yaml(out / SETTINGS_FILE)  # the run's own settings
        else:
            settings = TrainSettings()
        settings = settings.replace(
            task=task,
            task_options=_task_options(task_option),
            strategy=strategy,
            selection=selection,
            q=q,
            amp=amp,
            alpha=alpha,
            k=k,
            gamma_norm=gamma_norm,
            shape=shape,
            credit_forward=credit_forward,
            num_iterations=num_iterations,
            rhythm_options={**settings.rhythm_options, "heads": _heads_setting(heads)}
            if heads is not None
            else None,
            model=model,
            steps=steps,
            learning_rate=learning_rate,
            num_generations=num_generations,
            per_device_train_batch_size=batch_size,
            max_completion_length=max_completion_length,
            temperature=temperature,
            seed=seed,
            data_seed=data_seed,
            n_train=n_train,
            save_steps=save_steps,
            device=device,
            output_dir=str(out) if out is not None else None,
        )
        from attnrhythm.models import resolve_checkpoint

        resolve_checkpoint(settings.model)  # bad model or run directory: one line before any output
        check_run_dir(settings, resume=resume, overwrite=overwrite)
        console.print(
            f"training {settings.model} on {settings.task} with {settings.strategy} credit for "
            f"{settings.steps} steps -> {settings.output_dir}",
            highlight=False,
        )
        with _progress() as bar:
            job = bar.add_task("training", total=settings.steps)

            def progress(step: int, total: int) -> None:
                bar.update(job, completed=step, total=total)

            summary = run_training(settings, resume=resume, overwrite=overwrite, progress=progress)
        records = summary["metrics"]
        last = records[-1] if records else {}
        sps = summary["seconds_per_step"]
        out_console.print(
            f"done: {summary['steps']} steps"
            + (f", resumed from {Path(summary['resumed_from']).name}" if summary["resumed_from"] else "")
            + (f", last reward {last['reward_mean']:.3f}" if last.get("reward_mean") is not None else "")
            + (f", {sps:.2f} s/step" if sps is not None else ""),
            highlight=False,
        )
        out_console.print(f"run directory: {summary['output_dir']} (final model in {summary['final']})")

    @app.command("eval")
    def eval_command(
        model: str = ModelOpt,
        task: str = TaskOpt,
        task_option: list[str] = TaskOptionOpt,
        n: int = typer.Option(64, "--n", help="Held-out problems."),
        samples: int = typer.Option(4, "--samples", "-k", help="K sampled completions per problem (avg@K)."),
        temperature: float = typer.Option(1.0, "--temperature", help="Temperature of the K samples."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
        eval_seed: int = typer.Option(10_000, "--eval-seed", help="Seed of the held-out problems."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per completion at most."),
        batch_size: int = typer.Option(16, "--batch-size", help="Sequences per generation batch."),
        exclude_run: Path = typer.Option(
            None, "--exclude-run", help="A training run directory: drop its training prompts from the set."
        ),
        device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
        out: Path = typer.Option(
            None, "--out", "-o", help="Write the results (with per-problem rows) as JSON."
        ),
    ) -> None:
        """Held-out accuracy: greedy pass@1, avg@K and pass@K over K samples, mean reward.

        --model may be a training run directory (it has settings.yaml and final/): its final model
        is evaluated, its task is the default, and its training prompts are left out.
        """
        from rich.table import Table

        from attnrhythm.models import load_model
        from attnrhythm.tasks import get_task
        from attnrhythm.train.evaluate import evaluate
        from attnrhythm.train.runs import FINAL_DIR, SETTINGS_FILE, TrainSettings, training_prompts

        if n < 1:
            raise AttnRhythmError(f"bad --n {n}: evaluate at least 1 problem")
        run_dir = Path(model)
        run_settings = None
        if run_dir.is_dir() and (run_dir / SETTINGS_FILE).is_file():
            if not (run_dir / FINAL_DIR).is_dir():
                raise AttnRhythmError(
                    f"run directory {run_dir} has no {FINAL_DIR}/ model: finish the run or pass a checkpoint"
                )
            run_settings = TrainSettings.from_yaml(run_dir / SETTINGS_FILE)
            model = str(run_dir / FINAL_DIR)
        if exclude_run is not None:
            if not (exclude_run / SETTINGS_FILE).is_file():
                raise AttnRhythmError(
                    f"--exclude-run {exclude_run} has no {SETTINGS_FILE}: pass a training run"
                )
            run_settings = TrainSettings.from_yaml(exclude_run / SETTINGS_FILE)
        options = _task_options(task_option)
        if task is None and run_settings is not None:
            task_obj = run_settings.replace(task_options=options).make_task()
        else:
            opts = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
            task_obj = get_task(task or "countdown", **opts)
        exclude = training_prompts(run_settings) if run_settings is not None else None
        with console.status(f"loading model {model} ..."):
            lm, tokenizer = load_model(model, device=device)
        with _progress() as bar:
            job = bar.add_task("evaluating", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(job, completed=done, total=total)

            result = evaluate(
                lm,
                tokenizer,
                task_obj,
                n=n,
                samples=samples,
                temperature=temperature,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                eval_seed=eval_seed,
                exclude_prompts=exclude,
                progress=progress,
            )
        result["model"] = model
        table = Table(title=f"{task_obj.name}: {result['n']} held-out problems (eval seed {eval_seed})")
        for column in ("pass@1 (greedy)", f"avg@{samples}", f"pass@{samples} (sampled)", "mean reward"):
            table.add_column(column, justify="right")

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        table.add_row(
            fmt(result["pass@1"]), fmt(result["avg@K"]), fmt(result["pass@K"]), fmt(result["mean_reward"])
        )
        out_console.print(table)
        out_console.print(
            "pass@1: greedy; avg@K: mean accuracy of K samples at the temperature; correct = reward 1.0",
            highlight=False,
        )
        if out is not None:
            _write_json(out, result)
            console.print(f"wrote {out}", highlight=False)
