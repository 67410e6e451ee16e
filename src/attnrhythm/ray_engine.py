"""``attnrhythm analyze --engine ray``: the same analysis on a Ray cluster (the ``ray`` extra).

The driver (the process that runs the command) reads the input with the local engine's reader,
tokenises it with the model's tokenizer (no weights are loaded there), checks the analysis
settings against the model's structure (on the meta device) and plans the same batches as the
local engine (:func:`attnrhythm.runner.plan_batches`: by length, from the whole input). It opens the
same resumable writer on ``OUT``, so a rerun skips every record already there, and hands each
planned batch that still misses records to Ray Data as one row. ``map_batches`` runs
:class:`BatchAnalyzer` on a pool of actors, one model each, with the CPUs/GPUs asked per actor;
an actor analyses its rows with :func:`attnrhythm.runner.run_batches` (the function the local
engine calls) and sends the records back. The driver writes them as they arrive (one flushed line
each, into ``OUT.partial``) and, when the run ends, publishes ``OUT`` in input order in one atomic
step. A batch is the same as in a local run, so its records are the same floats (on the same kind
of device and thread count).

Ray is imported only when this engine runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnrhythm.analyze import AnalysisConfig, Analyzer
from attnrhythm.distributed import Launch
from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import InputItem, ResumableWriter
from attnrhythm.runner import (
    GenerationConfig,
    RunSummary,
    Work,
    batch_tokens,
    plan_batches,
    prepare,
    run_batches,
)

RAY_INSTALL = "pip install 'attnrhythm[ray]'"


@dataclass(frozen=True)
class RayResources:
    """Where and how the actors run: the cluster ``address`` (``None``: the cluster in
    ``RAY_ADDRESS`` or a new local one; ``auto``: the one started on this node with ``ray start``),
    the number of ``actors`` (one model each) and the ``cpus`` and ``gpus`` each actor holds."""

    address: str | None = None
    actors: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    def check(self, device: str) -> None:
        """One-line errors for settings no actor could run with on ``device``."""
        if self.actors < 1:
            raise AttnRhythmError(f"bad --ray-actors {self.actors}: it must be >= 1")
        if self.cpus < 0 or self.gpus < 0:
            raise AttnRhythmError("--ray-cpus and --ray-gpus must be >= 0")
        if device.startswith("cuda") and self.gpus == 0:
            raise AttnRhythmError(
                f"--device {device} on Ray needs a GPU per actor: pass --ray-gpus 1 (or a share like 0.5)"
            )


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AttnRhythmError(f"--engine ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


class BatchAnalyzer:
    """Ray Data's callable class: each actor loads the model once; each input row is one planned
    batch (JSON: its items in plan order and the keys already written), each output row that
    batch's new records and the one-line errors of traces that could not be analysed (JSON)."""

    def __init__(
        self,
        model: str,
        device: str,
        config: AnalysisConfig,
        chat: bool,
        generation: GenerationConfig,
    ) -> None:
        from attnrhythm.models import load_model

        if device.startswith("cuda"):
            device = "cuda"  # Ray gives the actor its GPU(s) as the visible ones
        self.model, self.tokenizer = load_model(model, device=device)
        self.analyzer = Analyzer(self.model, config)
        self.chat = chat
        self.generation = generation

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[str]]:
        records: list[str] = []
        errors: list[str] = []
        for text in rows["batch"]:
            found, problems = self.analyze(json.loads(text))
            records.append(json.dumps(found, ensure_ascii=False))
            errors.append(json.dumps(problems, ensure_ascii=False))
        return {"records": records, "errors": errors}

    def analyze(self, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of one planned batch that are not in ``batch["done"]``, and its errors."""
        items = [InputItem(index, data) for index, data in batch["items"]]
        summary = RunSummary()
        work = prepare(
            items,
            self.tokenizer,
            chat=self.chat,
            generation=self.generation,
            max_len=self.analyzer.max_len,
            errors=summary.errors,
        )
        collected = _Collected()
        run_batches(
            [work],
            self.analyzer,
            self.tokenizer,
            collected,
            summary,
            chat=self.chat,
            generation=self.generation,
            done_elsewhere=set(batch["done"]),
        )
        return collected.records, summary.errors


class _Collected:
    """A writer for :func:`run_batches` that keeps the records (sent back to the driver)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def done(self, key: str) -> bool:
        return False

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def _row(batch: list[Work], writer: ResumableWriter) -> dict[str, str]:
    items = [[w.item.index, w.item.data] for w in batch]
    done = [w.item.key for w in batch if writer.done(w.item.key)]
    return {"batch": json.dumps({"items": items, "done": done}, ensure_ascii=False)}


def _connect(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as err:
        raise AttnRhythmError(
            f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'} ({err}): start it with "
            "`ray start --head` or pass --ray-address HOST:PORT"
        ) from None


def _check_cluster(ray: Any, resources: RayResources) -> None:
    """One line instead of a run that waits forever for GPUs the cluster does not have."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if resources.gpus > 0 and gpus < resources.gpus:
        raise AttnRhythmError(
            f"--ray-gpus {resources.gpus:g} per actor, but the Ray cluster has {gpus:g} GPU(s): start the "
            "GPU nodes with `ray start --address HEAD:6379`, or pass --ray-gpus 0 to run on CPUs"
        )


def analyze_ray(
    items: list[InputItem],
    *,
    model: str,
    device: str,
    config: AnalysisConfig,
    out: Path,
    resources: RayResources,
    batch_size: int = 4,
    chat: bool = True,
    generation: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """Analyse ``items`` on a Ray cluster into ``out`` (resumable, atomic, in input order)."""
    ray = import_ray()
    resources.check(device)
    if Launch.from_env().world > 1:
        raise AttnRhythmError(
            "--engine ray runs from one process: start it with python or attnrhythm, not torchrun/accelerate"
        )
    from attnrhythm.models import load_skeleton

    generation = generation or GenerationConfig()
    skeleton, tokenizer = load_skeleton(model)
    # the settings are checked against the model here, as the actors will (a bad one: one line, no cluster)
    analyzer = Analyzer(skeleton, config)
    summary = RunSummary(out=out)
    work = prepare(
        items, tokenizer, chat=chat, generation=generation, max_len=analyzer.max_len, errors=summary.errors
    )
    batches = sorted(plan_batches(work, batch_size), key=batch_tokens, reverse=True)  # costliest first
    with ResumableWriter(out, order=[w.item.key for w in work]) as writer:
        summary.resumed = writer.resumed
        todo = [b for b in batches if any(not writer.done(w.item.key) for w in b)]
        total = sum(1 for b in todo for w in b if not writer.done(w.item.key))
        if not todo:
            return summary
        _connect(ray, resources.address)
        _check_cluster(ray, resources)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray's warnings stay, its chatter goes
        ray.data.DataContext.get_current().enable_progress_bars = False  # the command shows its own
        rows = ray.data.from_items([_row(b, writer) for b in todo], override_num_blocks=len(todo))
        analysed = rows.map_batches(
            BatchAnalyzer,
            batch_size=1,
            fn_constructor_kwargs=dict(
                model=model, device=device, config=config, chat=chat, generation=generation
            ),
            compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
        )
        finished = 0
        try:
            for row in analysed.iter_rows():
                for record in json.loads(row["records"]):
                    if not writer.done(record["key"]):
                        writer.write(record)
                        summary.written += 1
                    finished += 1
                problems = json.loads(row["errors"])
                summary.errors.extend(problems)
                finished += len(problems)
                if on_progress is not None:
                    on_progress(finished, total)
        except AttnRhythmError:
            raise
        except Exception as err:
            raise AttnRhythmError(_failure(err, out)) from err
    return summary


def _failure(err: BaseException, out: Path) -> str:
    """One line for a failed Ray run: the actor's own one-line error when there is one."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, AttnRhythmError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    first = (str(err).strip().splitlines() or [""])[0]
    return (
        f"the Ray run failed ({type(err).__name__}: {first}): the records written so far are in "
        f"{out}.partial; rerun the same command to finish the rest"
    )
