"""Running a study end to end: sample responses, analyse them, measure, write the files.

Output directory layout (``--out DIR``):

* ``settings.json`` -- what the responses depend on (model, problem source, seed, sampling
  and analysis parameters). A rerun into the same directory must match it, so a resumed run
  never mixes responses from two configurations; ``--n`` may grow between runs.
* ``records.jsonl`` -- one analysis record per sampled response (the ``attnrhythm analyze``
  schema, plus ``answer`` and ``correct``); written through the resumable atomic writer.
* ``trials.jsonl`` (perturb) -- one trial per response, resumable the same way.
* ``results.json``, ``results.md``, ``couplings.png`` / ``perturb.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput
from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import InputItem, ResumableWriter, read_records, write_json_atomic, write_text_atomic
from attnrhythm.runner import GenerationConfig, analyze_items
from attnrhythm.studies.couplings import PeakSpec, TraceSeries, couplings
from attnrhythm.studies.outputs import (
    couplings_markdown,
    couplings_plot,
    perturb_markdown,
    perturb_plot,
)
from attnrhythm.studies.perturb import PerturbConfig, perturb_record, summarise_trials
from attnrhythm.studies.problems import problem_set

Progress = Callable[[str, int, int], None]


@dataclass
class SampleConfig:
    """How study responses are produced."""

    problems: str = "builtin"
    n: int = 70
    seed: int = 0
    temperature: float = 0.7
    max_new_tokens: int = 256
    batch_size: int = 8
    chat: bool = True


def _settings(model_name: str, sample: SampleConfig, analysis: AnalysisConfig) -> dict[str, Any]:
    lo, hi = analysis.fai_horizon  # type: ignore[misc]
    settings = {
        "model": model_name,
        "problems": sample.problems,
        "seed": sample.seed,
        "temperature": sample.temperature,
        "max_new_tokens": sample.max_new_tokens,
        "chat": sample.chat,
        "layers": analysis.layers if isinstance(analysis.layers, str) else list(analysis.layers),
        "window": analysis.window,
        "fai_horizon": [lo, hi],
        "head_quantile": analysis.head_quantile,
        "proximity": analysis.proximity,
        "receiver_count": analysis.receiver_count,
    }
    if analysis.heads is not None:  # a fixed head set (only then, so older settings.json still match)
        settings["heads"] = {
            "layers": list(analysis.heads_layers or []),
            "local": [list(h) for h in analysis.heads.local],
            "global": [list(h) for h in analysis.heads.global_],
        }
    return settings


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if old != settings:
            changed = sorted(k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k])
            raise AttnRhythmError(
                f"{out} holds a study run with other settings ({', '.join(changed) or 'unreadable'}): "
                "use another --out or delete that directory"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)


def sampled_records(
    model: Any,
    tokenizer: Any,
    model_name: str,
    sample: SampleConfig,
    analysis: AnalysisConfig,
    out: Path,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Sample one response per problem at ``sample.temperature``, analyse each (resumable), and
    return the records of this run's problems (in problem order) with the skipped-line errors."""
    if sample.batch_size < 1:
        raise AttnRhythmError(f"bad --batch-size {sample.batch_size}: it must be >= 1")
    if analysis.receiver_count == 0:
        raise AttnRhythmError("the studies need receiver heads: give --receivers > 0 or leave it unset")
    problem_list = problem_set(sample.problems, sample.n, sample.seed)
    problems = problem_list.problems
    _check_settings(out, _settings(model_name, sample, analysis))
    items = [InputItem(i + 1, dict(p)) for i, p in enumerate(problems)]
    summary = analyze_items(
        items,
        model,
        tokenizer,
        analysis,
        out=out / "records.jsonl",
        batch_size=sample.batch_size,
        chat=sample.chat,
        generation=GenerationConfig(
            max_new_tokens=sample.max_new_tokens, temperature=sample.temperature, seed=sample.seed
        ),
        on_progress=(lambda done, total: progress("sampling + analysing", done, total)) if progress else None,
    )
    by_key = {str(r.get("key")): r for r in read_records(out / "records.jsonl")}
    records = []
    for i, p in enumerate(problems):
        record = by_key.get(p["id"])
        if record is not None:
            record["correct"] = problem_list.correct(i, record.get("response", ""))
            records.append(record)
    return records, summary.errors


def sampling_settings(directory: Path) -> dict[str, Any]:
    """Model, problems and sampling parameters of a study directory's responses ({} if unknown)."""
    path = directory / "settings.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    keys = ("model", "problems", "seed", "temperature", "max_new_tokens")
    return {k: settings[k] for k in keys if k in settings} if isinstance(settings, dict) else {}


def check_records(records: list[dict[str, Any]], source: Path | str) -> None:
    """One-line error unless every record has what the studies read (from attnrhythm analyze)."""
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise AttnRhythmError(
                f"record {i} of {source} is not a JSON object: pass records written by attnrhythm analyze"
            )
        missing = [k for k in ("input_ids", "response_start", "metrics") if k not in r]
        if missing:
            raise AttnRhythmError(
                f"record {i} of {source} has no {', '.join(missing)}: "
                "pass records written by attnrhythm analyze"
            )


def reanalysed_records(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    analysis: AnalysisConfig,
    out: Path,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """The same token sequences analysed again under ``analysis`` (e.g. ``sinks="exclude"``),
    resumable in ``out/records.jsonl``; every other field of a record (key, answer, ...) is kept."""
    analyzer = Analyzer(model, analysis)
    keys = [str(r.get("key", r.get("id", i))) for i, r in enumerate(records)]
    with ResumableWriter(out / "records.jsonl") as writer:
        todo = [(k, r) for k, r in zip(keys, records) if not writer.done(k)]
        done = len(records) - len(todo)
        for i in range(0, len(todo), max(1, batch_size)):
            chunk = todo[i : i + batch_size]
            traces = [TraceInput([int(t) for t in r["input_ids"]], int(r["response_start"])) for _, r in chunk]  # noqa: E501
            for (key, old), result in zip(chunk, analyzer.analyze(traces)):
                writer.write({**old, **result.to_record(tokenizer), "key": key})
            done += len(chunk)
            if progress:
                progress("re-analysing", done, len(records))
    by_key = {str(r["key"]): r for r in read_records(out / "records.jsonl")}
    return [{**by_key[k], **{f: r[f] for f in ("correct",) if f in r}} for k, r in zip(keys, records)]


def known_continuations(path: Path | None) -> dict[str, dict[int, dict[str, Any]]]:
    """key -> position -> the high/low entry of an earlier perturb run's ``trials.jsonl``."""
    known: dict[str, dict[int, dict[str, Any]]] = {}
    if path is None:
        return known
    for trial in read_records(path):
        for which in ("high", "low"):
            entry = trial.get(which)
            if isinstance(entry, dict) and "position" in entry:
                known.setdefault(str(trial["key"]), {})[int(entry["position"])] = {
                    **entry,
                    "config": {f: trial.get(f) for f in ("top_k", "horizon", "margin", "reference")},
                }
    return known


def run_meta(model_name: str, sample: SampleConfig | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"model": model_name, "responses": len(records)}
    if sample is not None:
        meta.update(problems=sample.problems, seed=sample.seed, temperature=sample.temperature,
                    max_new_tokens=sample.max_new_tokens, n=sample.n)  # fmt: skip
    correct = [r["correct"] for r in records if "correct" in r]
    if correct:
        meta["accuracy"] = sum(correct) / len(correct)
    lengths = [len(r["input_ids"]) - int(r["response_start"]) for r in records]
    if lengths:
        meta["mean_response_tokens"] = sum(lengths) / len(lengths)
    return meta


def run_couplings(
    records: list[dict[str, Any]],
    out: Path,
    *,
    spec: PeakSpec,
    permutations: int = 2000,
    bootstrap: int = 2000,
    seed: int = 0,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the three couplings on analysed records and write results.json/.md/couplings.png."""
    traces = [TraceSeries.from_record(r) for r in records]
    results = couplings(traces, spec, permutations=permutations, bootstrap=bootstrap, seed=seed)
    results["run"] = run or {}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", couplings_markdown(results))
    couplings_plot(results, out / "couplings.png")
    return results


def run_perturb(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    out: Path,
    *,
    config: PerturbConfig,
    bootstrap: int = 2000,
    seed: int = 0,
    run: dict[str, Any] | None = None,
    progress: Progress | None = None,
    reuse: Path | None = None,
) -> dict[str, Any]:
    """One perturbation trial per record (resumable, ``trials.jsonl``), then the summary files.

    ``reuse``: the ``trials.jsonl`` of an earlier run with the same settings on the same responses
    (e.g. the keep-sinks run before the exclude-sinks one): a position perturbed there is not
    decoded again (greedy continuations of the same prefix are the same)."""
    known = known_continuations(reuse)
    out.mkdir(parents=True, exist_ok=True)
    keys = [str(r.get("key", r.get("id"))) for r in records]
    with ResumableWriter(out / "trials.jsonl") as writer:
        todo = [(k, r) for k, r in zip(keys, records) if not writer.done(k)]
        done = len(records) - len(todo)
        if progress:
            progress("perturbing", done, len(records))
        for key, record in todo:
            trial = perturb_record(model, tokenizer, {**record, "key": key}, config, known=known.get(key))
            writer.write(trial)
            done += 1
            if progress:
                progress("perturbing", done, len(records))
    by_key = {str(t["key"]): t for t in read_records(out / "trials.jsonl")}
    trials = [by_key[k] for k in keys if k in by_key]
    results = {
        "config": asdict(config),
        "summary": summarise_trials(trials, bootstrap=bootstrap, seed=seed),
        "run": run or {},
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", perturb_markdown(results))
    perturb_plot(results, trials, out / "perturb.png")
    return results
