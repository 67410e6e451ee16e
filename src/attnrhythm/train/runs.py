"""One GRPO training run with attention-rhythm credit, from settings to a finished run directory.

``TrainSettings`` holds everything a run needs (task, credit strategy, model, optimisation); it loads
from YAML (``TrainSettings.from_yaml``; the keys are the field names) and :func:`train` runs it::

    from attnrhythm.train.runs import TrainSettings, train
    settings = TrainSettings(task="countdown", strategy="coupled", steps=20, output_dir="runs/coupled")
    summary = train(settings)

The training set is ``task.examples(n_train, seed=data_seed)``; each prompt becomes a chat message
list ``[{"role": "user", "content": prompt}]`` for chat models (TRL 1.16 applies the chat template
with a generation prompt to conversational prompts) and stays plain text otherwise. The other
example fields are dataset columns, which TRL forwards to the reward (:func:`task_reward_func`).
TRL's sampler shuffles with ``seed``, so two runs with the same ``data_seed`` and ``seed`` see the
same prompts in the same order whatever their strategy.

The run directory (``output_dir``) holds:

* ``settings.yaml``: the resolved settings (a rerun with ``--config settings.yaml`` repeats the run);
* ``metrics.jsonl``: one JSON object per logged optimiser step (``logging_steps``, 1 by default),
  appended and flushed as training goes, with the keys

  ==========================  ==================================================================
  ``step``                    optimiser step (1-based)
  ``reward_mean``             mean task reward of the step's completions (TRL's ``reward``)
  ``reward_std``              TRL's ``reward_std`` (mean over groups of the in-group std)
  ``accuracy``                share of the step's completions with reward == 1.0
  ``loss``                    training loss
  ``learning_rate``           learning rate used at this step
  ``grad_norm``               gradient norm before clipping (None when not logged)
  ``completion_length``       mean completion length in tokens (TRL's ``completions/mean_length``)
  ``seconds_per_step``        wall time of the step (generation, reward, credit, backward, update)
  ``rhythm_seconds``          wall time of the credit forward within the step (0 for ``none``)
  ``rhythm/*``                every credit metric of :class:`RhythmGRPOTrainer` (``gamma_mean``,
                              ``amplified_share``, ``seconds``, role shares, ``analysed_share``,
                              ``fused``: 1 when captured in TRL's forward)
  ``time``                    Unix time of the record
  ==========================  ==================================================================

  With ``logging_steps > 1`` the values are TRL's averages over the logged steps and
  ``seconds_per_step`` is the mean over them;
* ``checkpoint-N/``: Hugging Face Trainer checkpoints every ``save_steps`` steps (0: none); with
  ``heads: refresh:K`` each (and ``final/``) holds ``rhythm_heads.json``, the head set in use and
  the spans collected for the next refresh, which ``--resume`` restores (docs/training.md);
* ``final/``: the trained model and tokenizer (``save_pretrained``), loadable with ``--model``;
* ``reward_curve.png``: reward and accuracy per step.

``train(settings, resume=True)`` continues from the newest ``checkpoint-N`` (optimizer, scheduler,
RNG and sampler state included) up to ``steps``; ``metrics.jsonl`` records after step N are
dropped first, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnrhythm.config import ModelSettings
from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import write_text_atomic
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.settings import Composed, build, declared, default, flat_names, nested, setting
from attnrhythm.tasks import Task, get_task
from attnrhythm.train.rewards import completion_text

METRICS_FILE = "metrics.jsonl"
SETTINGS_FILE = "settings.yaml"
CURVE_FILE = "reward_curve.png"
FINAL_DIR = "final"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(init=False)
class TrainSettings(Composed):
    """Everything one training run needs, composed of the rhythm credit settings.

    YAML files and :meth:`replace` use flat keys: these fields, and every setting of
    :class:`~attnrhythm.rollout.config.RhythmCreditConfig` by its own name (``strategy``, ``q``,
    ``window``, ``fai_horizon``, ``heads``, ...; ``rhythm_options: {name: value}`` is accepted
    too). ``seed`` is the trainer's; the random baseline's seed follows it unless
    ``rhythm_options`` sets ``seed``.

    Attributes:
        task, task_options: the task name and the keyword arguments of its class
            (e.g. ``{"n_numbers": [2, 2], "max_number": 10}`` for countdown).
        rhythm: the credit (:class:`RhythmCreditConfig`: strategy, credit forward, analysis and
            credit parameters; docs/method.md sections 1-5).
        load: the model (``model``: ``embedded``, a checkpoint directory, a ``.gguf`` file or a
            cached hub id) and ``device`` (``auto``: CUDA when available, ``cpu``, ``cuda`` or ``cuda:N``).
        steps: optimiser steps (``max_steps``).
        learning_rate: 1e-5 by default, so that a few dozen CPU steps move the policy; the paper
            trains with 1e-6 for thousands of steps. No KL term (``beta`` 0) as in the paper.
        num_generations: completions per prompt (the GRPO group).
        per_device_train_batch_size: completions per optimiser step (a multiple of
            ``num_generations``; prompts per step = this / num_generations).
        num_iterations: optimiser passes over each rollout batch (TRL's ``num_iterations``; > 1
            makes TRL compute ``old_per_token_logps``, which the fused credit reuses).
        max_completion_length, temperature: generation during training (T = 1.0 as in the paper).
        seed: TRL/Trainer seed (sampler order, generation); data_seed: the examples drawn.
        n_train: training examples drawn from the task.
        save_steps: checkpoint every this many steps (0: no intermediate checkpoints).
        chat: chat-format prompts when the tokenizer has a chat template.
        grpo_options: further ``trl.GRPOConfig`` fields, passed through as given.
    """

    task: str = setting(
        "countdown",
        help="countdown, wordproblems, arithmetic, math, or rg:NAME[:KEY=VALUE,...] (a reasoning-gym "
        "dataset).",
        short="-t",
    )
    task_options: dict[str, Any] = field(default_factory=dict)
    rhythm: RhythmCreditConfig = nested(RhythmCreditConfig)
    load: ModelSettings = nested(ModelSettings)
    output_dir: str = setting(
        "runs/train", help="Run directory (metrics, checkpoints, final/).", flag="--out", short="-o"
    )
    steps: int = setting(50, help="Optimiser steps.")
    learning_rate: float = setting(1e-5, help="AdamW learning rate.")
    beta: float = setting(0.0, help="KL coefficient (0: no KL term, as in the paper).")
    num_generations: int = setting(4, help="Completions per prompt (the GRPO group).")
    per_device_train_batch_size: int = setting(
        8, help="Completions per step (a multiple of --num-generations).", flag="--batch-size"
    )
    gradient_accumulation_steps: int = setting(1, help="Gradient accumulation steps.")
    num_iterations: int = setting(1, help="Optimiser passes over each rollout batch (TRL's num_iterations).")
    max_completion_length: int = setting(
        128, help="Tokens generated per completion at most.", flag="--max-new-tokens"
    )
    temperature: float = setting(1.0, help="Sampling temperature in training.")
    seed: int = setting(0, help="Trainer seed (data order, sampling; the random baseline's too).")
    data_seed: int = setting(0, help="Seed of the training examples.")
    n_train: int = setting(1000, help="Training examples drawn from the task.")
    save_steps: int = setting(0, help="Checkpoint every N steps (0: none).")
    logging_steps: int = setting(1, help="Log (metrics.jsonl) every N steps.")
    chat: bool = setting(
        True, help="Wrap the prompt in the model's chat template (when it has one).", flag="--chat/--no-chat"
    )
    grpo_options: dict[str, Any] = field(default_factory=dict)

    _source = "settings"

    def __init__(self, rhythm_options: dict[str, Any] | None = None, **values: Any) -> None:
        self._init(_with_rhythm_options(values, rhythm_options), self._source)

    def __post_init__(self) -> None:
        self.validate()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [*flat_names(cls), "rhythm_options"]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "settings") -> TrainSettings:
        if not isinstance(data, dict):
            raise AttnRhythmError(f"{source} must be a mapping of setting names to values, e.g. 'steps: 20'")
        values = dict(data)
        try:
            return build(cls, _with_rhythm_options(values, values.pop("rhythm_options", None)), source=source)
        except TypeError as err:  # pragma: no cover - every key is a field, so only odd values land here
            raise AttnRhythmError(f"bad settings in {source} ({err}): check the value types") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainSettings:
        """Settings from a YAML mapping of flat keys (unknown keys are an error)."""
        return cls.from_dict(read_yaml(path), source=str(path))

    def replace(self, **overrides: Any) -> TrainSettings:
        """A copy with the given settings (flat keys) replaced; ``None`` (a flag not given) is ignored."""
        values = {key: value for key, value in overrides.items() if value is not None}
        return self.from_dict({**self.to_dict(), **values}, source="the overrides")

    @property
    def rhythm_options(self) -> dict[str, Any]:
        """The rhythm credit settings by flat name (the random baseline's ``seed`` included)."""
        return self.rhythm.flat()

    def to_dict(self) -> dict[str, Any]:
        """The flat form (what ``settings.yaml`` holds): every setting once, by its own name."""
        out = {k: v for k, v in self.flat().items() if k != "heads_layers"}
        credit_seed = self.rhythm.analysis.credit.seed
        if credit_seed != self.seed:
            out["rhythm_options"] = {"seed": credit_seed}
        return out

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        text = yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)
        write_text_atomic(Path(path), text)

    # -- checks and derived objects ---------------------------------------------------------
    def validate(self) -> None:
        ints = {
            "steps": 1,
            "num_generations": 2,
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "num_iterations": 1,
            "max_completion_length": 1,
            "n_train": 1,
            "save_steps": 0,
            "logging_steps": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AttnRhythmError(f"bad {name} {value!r}: it must be an integer >= {low}")
        for name in ("learning_rate", "temperature", "beta", "q", "amp", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AttnRhythmError(f"bad {name} {value!r}: it must be a number")
        if self.learning_rate <= 0:
            raise AttnRhythmError(f"bad learning_rate {self.learning_rate}: it must be > 0")
        if self.temperature <= 0:
            raise AttnRhythmError(
                f"bad temperature {self.temperature}: training samples need a temperature > 0"
            )
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise AttnRhythmError(
                f"per_device_train_batch_size x gradient_accumulation_steps ({batch}) is not a multiple of "
                f"num_generations ({self.num_generations}): make it one"
            )
        if self.device not in ("auto", "cpu", "cuda") and cuda_index(self.device) is None:
            raise AttnRhythmError(f"bad device {self.device!r}: use auto, cpu, cuda or cuda:N")
        for name in ("task_options", "grpo_options"):
            if not isinstance(getattr(self, name), dict):
                raise AttnRhythmError(f"bad {name}: it must be a mapping, e.g. {name}: {{key: value}}")
        if not str(self.output_dir).strip():
            raise AttnRhythmError("empty output_dir: pass a run directory with --out")
        self.make_task()
        self.rhythm_config()  # where the credit forward runs is resolved by the trainer

    def make_task(self) -> Task:
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.task_options.items()}
        return get_task(self.task, **options)

    def rhythm_config(self) -> RhythmCreditConfig:
        return self.rhythm

    def use_cpu(self) -> bool:
        """Whether the run is on the CPU; ``cuda:N`` makes GPU N the current device (one process)."""
        import torch

        index = cuda_index(self.device)
        if (self.device == "cuda" or index is not None) and not torch.cuda.is_available():
            raise AttnRhythmError(
                f"device {self.device} was asked for but this machine has no CUDA GPU: use --device cpu"
            )
        if index is not None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise AttnRhythmError(
                    f"device {self.device} in a launch of several processes: the launcher gives each "
                    "process its GPU, use --device cuda (or CUDA_VISIBLE_DEVICES to choose the GPUs)"
                )
            if index >= torch.cuda.device_count():
                raise AttnRhythmError(
                    f"device {self.device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                    f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
                )
            torch.cuda.set_device(index)  # accelerate's single-process device is the current one
        return self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())


def cuda_index(device: str) -> int | None:
    """N for a device string ``cuda:N``, else None."""
    head, _, tail = device.partition(":")
    return int(tail) if head == "cuda" and tail.isdigit() else None


def _with_rhythm_options(values: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    """Flat values with ``rhythm_options`` folded into the nested rhythm settings.

    The random baseline's seed follows the trainer's ``seed`` unless ``rhythm_options`` sets it.
    """
    if options is not None and not isinstance(options, dict):
        raise AttnRhythmError("bad rhythm_options: it must be a mapping, e.g. rhythm_options: {window: 4}")
    options = dict(options or {})
    known = set(declared(RhythmCreditConfig))
    unknown = sorted(set(options) - known)
    if unknown:
        valid = ", ".join(sorted(known))
        raise AttnRhythmError(f"unknown rhythm option '{unknown[0]}': valid ones are {valid}")
    rhythm = values.pop("rhythm", None)
    base = rhythm.flat() if isinstance(rhythm, RhythmCreditConfig) else dict(rhythm or {})
    if "seed" not in options and "seed" not in base:
        options["seed"] = values.get("seed", default(TrainSettings, "seed"))
    return {**values, "rhythm": {**base, **options}}


# ----------------------------------------------------------------------------------------------
# files


def read_yaml(path: str | Path) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise AttnRhythmError(f"config file {p} does not exist: pass a YAML file of training settings")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise AttnRhythmError(
            f"config file {p} is not UTF-8 (byte {err.start + 1}): save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise AttnRhythmError(f"config file {p} is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AttnRhythmError(f"config file {p} must be a YAML mapping of setting names to values")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``OUTPUT_DIR/metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _truncate_metrics(output_dir: Path, last_step: int) -> None:
    kept = [r for r in read_metrics(output_dir) if int(r.get("step", 0)) <= last_step]
    write_text_atomic(output_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))


def plot_reward_curve(records: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Reward mean (with +- std band) and accuracy per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    reward = [r.get("reward_mean") or 0.0 for r in records]
    std = [r.get("reward_std") or 0.0 for r in records]
    accuracy = [r.get("accuracy") for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, reward, marker="o", ms=3, label="reward mean")
    ax.fill_between(
        steps, [m - s for m, s in zip(reward, std)], [m + s for m, s in zip(reward, std)], alpha=0.2
    )
    if any(a is not None for a in accuracy):
        ax.plot(
            steps,
            [a if a is not None else float("nan") for a in accuracy],
            marker="s",
            ms=3,
            label="accuracy (reward = 1)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# training


def build_dataset(settings: TrainSettings, tokenizer: Any) -> Any:
    """The training ``datasets.Dataset``: the task's examples, chat-formatted prompts for chat models."""
    import datasets

    chat = settings.chat and bool(getattr(tokenizer, "chat_template", None))
    rows = []
    for example in settings.make_task().examples(settings.n_train, seed=settings.data_seed):
        row = dict(example)
        if chat:
            row["prompt"] = [{"role": "user", "content": example["prompt"]}]
        rows.append(row)
    return datasets.Dataset.from_list(rows)


def training_prompts(settings: TrainSettings) -> list[str]:
    """The prompt texts of the training set (to keep them out of an evaluation)."""
    return [ex["prompt"] for ex in settings.make_task().examples(settings.n_train, seed=settings.data_seed)]


class _AccuracyReward:
    """The task reward for TRL, also keeping the share of completions with reward == 1.0."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.__name__ = f"{task.name}_reward"
        self.correct = 0
        self.total = 0

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        from attnrhythm.train.rewards import _TRL_EXTRAS

        columns = {k: v for k, v in kwargs.items() if k not in _TRL_EXTRAS and isinstance(v, list)}
        out = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            example = {k: v[i] for k, v in columns.items() if len(v) == len(completions)}
            example["prompt"] = prompt
            out.append(float(self.task.reward(completion_text(completion), example)))
        self.correct += sum(r == 1.0 for r in out)
        self.total += len(out)
        return out

    def take_accuracy(self) -> float | None:
        value = self.correct / self.total if self.total else None
        self.correct = self.total = 0
        return value


NO_SIGNAL_STEPS = 3  # logged steps without reward signal before a run warns


def no_signal_warning(records: list[dict[str, Any]], steps: int = NO_SIGNAL_STEPS) -> str | None:
    """A warning when the last ``steps`` logged steps (all of them, if fewer) had no reward signal.

    No signal: every completion of each GRPO group got the same reward (``reward_std`` 0), so
    every advantage is 0 and the step changes nothing.
    """
    last = records[-steps:]
    if not last or any((r.get("reward_std") or 0.0) > 0 for r in last):
        return None
    mean = last[-1].get("reward_mean")
    reward = f"reward {mean:.3f}" if isinstance(mean, (int, float)) else "the same reward"
    return (
        f"no reward signal in the last {len(last)} step(s) (every completion of each group got {reward}): "
        "the advantages are 0 and nothing is learned; use an easier task (e.g. --task arithmetic), more "
        "completions per prompt (--num-generations) or a longer --max-new-tokens"
    )


def _metrics_callback(
    path: Path,
    reward: _AccuracyReward,
    progress: Callable[[int, int], None] | None,
    warn: Callable[[str], None] | None = None,
) -> Any:
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Appends one ``metrics.jsonl`` record per logged step (schema in the module docstring)."""

        def __init__(self) -> None:
            self.started: float | None = None
            self.durations: list[float] = []
            self.logged: list[dict[str, Any]] = []
            self.warned = False

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.started is not None:
                self.durations.append(time.perf_counter() - self.started)
                self.started = None
            if progress is not None:
                progress(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "reward" not in logs or not state.is_world_process_zero:
                return
            seconds = sum(self.durations) / len(self.durations) if self.durations else None
            self.durations = []
            record: dict[str, Any] = {
                "step": state.global_step,
                "reward_mean": logs.get("reward"),
                "reward_std": logs.get("reward_std"),
                "accuracy": reward.take_accuracy(),
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "completion_length": logs.get("completions/mean_length"),
                "seconds_per_step": seconds,
                "rhythm_seconds": logs.get("rhythm/seconds", 0.0),
            }
            record.update({k: v for k, v in logs.items() if k.startswith("rhythm/")})
            record["time"] = time.time()
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(_jsonable(record)) + "\n")
                fh.flush()
            self.logged.append(record)
            message = no_signal_warning(self.logged) if len(self.logged) >= NO_SIGNAL_STEPS else None
            if message is not None and warn is not None and not self.warned:
                self.warned = True
                warn(message)

    return MetricsCallback()


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def _grpo_config(settings: TrainSettings, output_dir: Path) -> Any:
    from trl import GRPOConfig

    values: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        num_generations=settings.num_generations,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_iterations=settings.num_iterations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        use_cpu=settings.use_cpu(),
        report_to=[],
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    values.update(settings.grpo_options)
    try:
        return GRPOConfig(**values)
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AttnRhythmError(
            f"TRL rejected the training settings ({first}): fix grpo_options or the flags"
        ) from None


def _run_exists(output_dir: Path) -> bool:
    return (
        (output_dir / METRICS_FILE).exists()
        or bool(checkpoints(output_dir))
        or (output_dir / FINAL_DIR).exists()
    )


def check_run_dir(settings: TrainSettings, *, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Check ``output_dir`` for a run as asked (nothing is changed); the checkpoint to resume or None.

    Raises :class:`AttnRhythmError` for ``resume`` without a checkpoint (or one already at ``steps``)
    and, without ``resume`` or ``overwrite``, for a directory that already holds a run.
    """
    output_dir = Path(settings.output_dir)
    if resume:
        found = checkpoints(output_dir)
        if not found:
            raise AttnRhythmError(
                f"--resume: no checkpoint-N directory in {output_dir}: train without --resume, or set "
                f"--save-steps so runs leave checkpoints"
            )
        last_step, path = found[-1]
        if last_step >= settings.steps:
            raise AttnRhythmError(
                f"--resume: {path.name} is already at step {last_step} >= --steps {settings.steps}: "
                f"pass a larger --steps"
            )
        return path
    if _run_exists(output_dir) and not overwrite:
        raise AttnRhythmError(
            f"{output_dir} already holds a training run: pass --resume to continue it, --overwrite to "
            f"start again, or another --out"
        )
    return None


def train(
    settings: TrainSettings,
    resume: bool = False,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run GRPO with rhythm credit as ``settings`` say (see the module docstring).

    Args:
        resume: continue from the newest ``checkpoint-N`` of ``output_dir`` (an error when none).
        overwrite: start afresh in an ``output_dir`` that already holds a run (its metrics are
            cleared; without it such a directory is an error, so no run is mixed with another).
        progress: called as ``progress(step, max_steps)`` after each optimiser step.
        warn: called once with :func:`no_signal_warning`'s line when the reward gives no signal for
            ``NO_SIGNAL_STEPS`` logged steps in a row.
        model, tokenizer: an already loaded policy (default: ``load_model(settings.model)``).

    Returns a summary: ``output_dir``, ``steps`` (the final global step), ``final`` (the saved model
    directory), ``metrics`` (the records), ``resumed_from`` (a checkpoint path or None),
    ``seconds_per_step`` and ``rhythm_seconds_per_step`` (means over this run's records).
    """
    import warnings

    output_dir = Path(settings.output_dir)
    if model is None or tokenizer is None:
        from attnrhythm.models import resolve_checkpoint

        resolve_checkpoint(settings.model)  # a bad model spec fails before anything is written
    resume_from = check_run_dir(settings, resume=resume, overwrite=overwrite)
    # several processes (torchrun / accelerate launch): the first one alone writes the run's files
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process and resume_from is not None:
        _truncate_metrics(output_dir, int(_CHECKPOINT_RE.match(resume_from.name).group(1)))
    elif main_process:  # a fresh run (or --overwrite): nothing of an earlier run may be resumed or mixed in
        import shutil

        (output_dir / METRICS_FILE).unlink(missing_ok=True)
        for _, path in checkpoints(output_dir):
            shutil.rmtree(path)
        shutil.rmtree(output_dir / FINAL_DIR, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    if main_process:
        settings.to_yaml(output_dir / SETTINGS_FILE)

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from attnrhythm.train.credit_trainer import RhythmGRPOTrainer

    if model is None or tokenizer is None:
        from attnrhythm.models import load_model

        model, tokenizer = load_model(settings.model)
    task = settings.make_task()
    reward = _AccuracyReward(task)
    dataset = build_dataset(settings, tokenizer)
    args = _grpo_config(settings, output_dir)
    callback = _metrics_callback(output_dir / METRICS_FILE, reward, progress, warn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RhythmGRPOTrainer(
            model,
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            rhythm=settings.rhythm_config(),
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = output_dir / FINAL_DIR
    trainer.save_model(str(final))  # every rank takes part (sharded models); transformers writes once
    trainer.accelerator.wait_for_everyone()  # the metrics and the model are complete past this point
    records = read_metrics(output_dir)
    if main_process:
        tokenizer.save_pretrained(str(final))
        if trainer.head_refresh is not None:  # heads refresh:K: the head set the run ended with
            trainer.head_refresh.save(final)
        title = f"{settings.task} / {settings.strategy} / seed {settings.seed}"
        plot_reward_curve(records, output_dir / CURVE_FILE, title=title)
    seconds = [r["seconds_per_step"] for r in records if r.get("seconds_per_step") is not None]
    rhythm = [r.get("rhythm_seconds") or 0.0 for r in records]
    return {
        "output_dir": str(output_dir),
        "steps": trainer.state.global_step,
        "final": str(final),
        "metrics": records,
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds_per_step": sum(seconds) / len(seconds) if seconds else None,
        "rhythm_seconds_per_step": sum(rhythm) / len(rhythm) if rhythm else None,
        "warned": callback.warned,
    }
