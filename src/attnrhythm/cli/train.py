"""``attnrhythm train`` and ``attnrhythm eval``: GRPO with rhythm credit, and held-out accuracy.

Registered on the main typer app by :func:`register` (called at the end of :mod:`attnrhythm.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from attnrhythm.cli.options import option
from attnrhythm.errors import AttnRhythmError
from attnrhythm.train.runs import TrainSettings


def _unset(name: str, *aliases: str) -> Any:
    """The flag of TrainSettings' setting ``name``: None unless given, its default shown in the help."""
    return option(TrainSettings, name, *aliases, unset=True)


TaskOpt = _unset("task")
TaskOptionOpt = typer.Option(
    None,
    "--task-option",
    help="A task option KEY=VALUE (VALUE read as YAML), repeatable, e.g. --task-option n_numbers=[2,2].",
)


def _heads_setting(value: str) -> str:
    """--heads as the run's settings keep it: a head set file becomes an absolute path."""
    from attnrhythm.config import parse_heads

    option = parse_heads(value)
    return str(Path(option.path).resolve()) if option.mode == "file" else value


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


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``eval`` commands to ``app``."""
    from attnrhythm.cli.options import DeviceOpt, ModelOpt, console, out_console, tagged
    from attnrhythm.cli.options import progress as _progress

    @app.command()
    def train(
        config: Path = typer.Option(
            None, "--config", "-c", help="YAML file of training settings (flat keys: the flag names with _)."
        ),
        task: str = TaskOpt,
        task_option: list[str] = TaskOptionOpt,
        strategy: str = _unset("strategy"),
        selection: str = _unset("selection"),
        q: float = _unset("q"),
        amp: float = _unset("amp"),
        alpha: float = _unset("alpha"),
        k: int = _unset("k"),
        gamma_norm: str = _unset("gamma_norm"),
        shape: str = _unset("shape"),
        credit_forward: str = _unset("credit_forward"),
        num_iterations: int = _unset("num_iterations"),
        heads: str = _unset("heads"),
        model: str = _unset("model"),
        steps: int = _unset("steps"),
        learning_rate: float = _unset("learning_rate", "--lr"),
        num_generations: int = _unset("num_generations"),
        batch_size: int = _unset("per_device_train_batch_size"),
        max_completion_length: int = _unset("max_completion_length", "--max-completion-length"),
        temperature: float = _unset("temperature"),
        seed: int = _unset("seed"),
        data_seed: int = _unset("data_seed"),
        n_train: int = _unset("n_train"),
        save_steps: int = _unset("save_steps"),
        device: str = _unset("device"),
        out: Path = _unset("output_dir"),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a --out holding a run."),
    ) -> None:
        """Train a policy with GRPO + attention-rhythm credit; writes metrics.jsonl, checkpoints, final/."""
        from attnrhythm.train.runs import SETTINGS_FILE, check_run_dir, no_signal_warning
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
            heads=_heads_setting(heads) if heads is not None else None,
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

            summary = run_training(
                settings,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                warn=lambda message: tagged("warning:", message, "yellow"),
            )
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
        out_console.print(
            f"run directory: {summary['output_dir']} (final model in {summary['final']})", highlight=False
        )
        message = no_signal_warning(records)
        if message is not None and not summary.get("warned"):
            tagged("warning:", message, "yellow")

    @app.command("eval")
    def eval_command(
        model: str = ModelOpt,
        task: str = TaskOpt,
        task_option: list[str] = TaskOptionOpt,
        n: int = typer.Option(64, "--n", help="Held-out problems."),
        samples: int = typer.Option(4, "--samples", help="K sampled completions per problem (avg@K)."),
        temperature: float = typer.Option(1.0, "--temperature", help="Temperature of the K samples."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
        eval_seed: int = typer.Option(10_000, "--eval-seed", help="Seed of the held-out problems."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per completion at most."),
        batch_size: int = typer.Option(16, "--batch-size", help="Sequences per generation batch."),
        exclude_run: Path = typer.Option(
            None, "--exclude-run", help="A training run directory: drop its training prompts from the set."
        ),
        device: str = DeviceOpt,
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
        from attnrhythm.train.runs import FINAL_DIR, SETTINGS_FILE, training_prompts

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
            from attnrhythm.records import write_json_atomic

            write_json_atomic(out, result)
            console.print(f"wrote {out}", highlight=False)
