"""``attnrhythm study couplings|perturb``: the paper's mechanism studies (docs/method.md section 6)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from attnrhythm.cli import options as cli
from attnrhythm.errors import AttnRhythmError

study_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Does a model have the preplan-and-anchor rhythm? The paper's two mechanism studies.",
)

# options shared by both studies
ProblemsOpt = typer.Option(
    "builtin",
    "--problems",
    help="builtin (seeded word problems), a JSONL file with question/answer, hf:NAME[:CONFIG[:SPLIT]] "
    "from the local Hugging Face cache, or rg:NAME[:KEY=VALUE,...] for a reasoning-gym dataset.",
)
NOpt = typer.Option(70, "--n", help="Problems (one sampled response each).")
TempOpt = typer.Option(0.7, "--temperature", help="Sampling temperature of the responses.")
SeedOpt = typer.Option(0, "--seed", help="Seed of the problems, the sampling and the statistics.")
MaxNewOpt = typer.Option(256, "--max-new-tokens", help="Response length limit.")
BatchOpt = typer.Option(8, "--batch-size", help="Responses per generation/analysis batch.")
RecordsOpt = typer.Option(
    None, "--records", help="Use these analysed records (from analyze, receivers on) instead of sampling."
)
BootOpt = typer.Option(2000, "--bootstrap", help="Bootstrap resamples over problems (95% intervals).")


def _prepare(
    *, model, device, problems, n, temperature, seed, max_new_tokens, batch_size, chat, records, out,
    layers, window, fai_horizon, head_quantile, proximity, receivers, need_model, heads=None,
    sinks="keep", sink_tokens=1,
):  # fmt: skip
    """(model, tokenizer, records, run metadata) from --records or by sampling (resumable)."""
    from attnrhythm.config import AnalysisConfig
    from attnrhythm.records import read_records
    from attnrhythm.studies.run import (
        SampleConfig,
        check_records,
        run_meta,
        sampled_records,
        sampling_settings,
    )

    if heads is not None and records is not None:
        raise AttnRhythmError(
            "--heads applies to responses the study analyses, and --records were analysed already: "
            "drop --heads, or re-analyse the responses with `attnrhythm analyze --heads FILE`"
        )
    analysis = AnalysisConfig(
        layers=layers,
        window=window,
        fai_horizon=fai_horizon,
        head_quantile=head_quantile,
        heads=heads,
        proximity=proximity,
        receiver_count=receivers,
        sinks=sinks,
        sink_tokens=sink_tokens,
    )
    sample = SampleConfig(problems=problems, n=n, seed=seed, temperature=temperature,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)  # fmt: skip
    if temperature < 0:
        raise AttnRhythmError(f"bad --temperature {temperature}: it must be >= 0")
    lm = tokenizer = None
    if records is not None:
        recs = read_records(records)
        if not recs:
            raise AttnRhythmError(f"{records} has no records: pass a JSONL written by attnrhythm analyze")
        check_records(recs, records)
        recorded = recs[0].get("sinks") or {"mode": "keep", "tokens": 1}
        again = recorded != {"mode": sinks, "tokens": sink_tokens}
        if need_model or again:
            lm, tokenizer = cli.load(model, device)
        if again:  # the same responses, analysed under this sink setting
            from attnrhythm.studies.run import reanalysed_records

            with cli.progress() as progress:
                task = progress.add_task("re-analysing", total=len(recs))
                recs = reanalysed_records(
                    lm, tokenizer, recs, analysis, out, batch_size=batch_size,
                    progress=lambda _label, done, total: progress.update(task, completed=done, total=total),
                )  # fmt: skip
        meta = run_meta(model if need_model or again else "from records", None, recs)
        meta.update(records=str(records), sinks=sinks, sink_tokens=sink_tokens,
                    **sampling_settings(Path(records).parent))  # fmt: skip
        return lm, tokenizer, recs, meta
    lm, tokenizer = cli.load(model, device)
    with cli.progress() as progress:
        tasks: dict[str, int] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        recs, errors = sampled_records(lm, tokenizer, model, sample, analysis, out, update)
    for err in errors:
        cli.tagged("skipped", err, "yellow")
    if not recs:
        raise AttnRhythmError("no response could be analysed: raise --max-new-tokens or check the model")
    meta = run_meta(model, sample, recs)
    meta.update(sinks=sinks, sink_tokens=sink_tokens)
    return lm, tokenizer, recs, meta


@study_app.command()
def couplings(
    model: str = cli.ModelOpt,
    device: str = cli.DeviceOpt,
    problems: str = ProblemsOpt,
    n: int = NOpt,
    temperature: float = TempOpt,
    seed: int = SeedOpt,
    max_new_tokens: int = MaxNewOpt,
    batch_size: int = BatchOpt,
    chat: bool = cli.ChatOpt,
    records: Path = RecordsOpt,
    out: Path = typer.Option(Path("study-couplings"), "--out", "-o", help="Output directory (resumes)."),
    peak_q: float = typer.Option(0.4, "--peak-q", help="Peaks lie among the top q of a curve's values."),
    peak_rule: str = typer.Option(
        "local-max", "--peak-rule", help="local-max (local maxima among the TopQ values) or top (all TopQ)."
    ),
    lag: int = typer.Option(1, "--lag", help="Coupling 3: a WAAD peak in [s-lag, s] for FAI peak s."),
    null: str = typer.Option(
        "shift", "--null", help="Null of the baselines: shift (one cyclic offset per response) or uniform."
    ),
    permutations: int = typer.Option(2000, "--permutations", help="Permutations for the p-values."),
    bootstrap: int = BootOpt,
    layers: str = cli.LayersOpt,
    window: int = cli.WindowOpt,
    fai_horizon: str = cli.HorizonOpt,
    head_quantile: float = cli.QuantileOpt,
    proximity: int = cli.ProximityOpt,
    receivers: int = cli.ReceiversOpt,
    heads: Path = cli.HeadsOpt,
) -> None:
    """Table 2: entropy at WAAD peaks, receiver vs global FAI peaks, FAI peaks at/after WAAD peaks."""
    from attnrhythm.studies.couplings import COUPLINGS, PeakSpec
    from attnrhythm.studies.run import run_couplings

    spec = PeakSpec(q=peak_q, rule=peak_rule, lag=lag, null=null)
    if permutations < 0 or bootstrap < 0:
        raise AttnRhythmError("bad --permutations/--bootstrap: they must be >= 0")
    started = time.perf_counter()
    _, _, recs, meta = _prepare(
        model=model, device=device, problems=problems, n=n, temperature=temperature, seed=seed,
        max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, records=records, out=out,
        layers=layers, window=window, fai_horizon=fai_horizon, head_quantile=head_quantile,
        proximity=proximity, receivers=receivers, need_model=False, heads=heads,
    )  # fmt: skip
    with cli.working("bootstrap and permutations ..."):
        results = run_couplings(recs, out, spec=spec, permutations=permutations, bootstrap=bootstrap,
                                seed=seed, run=meta)  # fmt: skip
    _table(results, COUPLINGS)
    cli.console.print(
        f"wrote {out}/results.json, results.md, couplings.png ({time.perf_counter() - started:.0f} s)",
        highlight=False,
    )


def _table(results, names) -> None:
    from rich.table import Table

    table = Table(title=f"Rhythm couplings (n = {results['problems']} responses)")
    for col in ("coupling", "observed", "random", "lift [95% CI]", "p", "paper lift"):
        table.add_column(col, justify="left" if col == "coupling" else "right")
    for name in names:
        r = results["couplings"][name]
        if r["observed"] is None:
            table.add_row(r["label"], "n/a", "n/a", "n/a", "n/a", f"{100 * r['paper']['lift']:+.1f}%")
            continue
        lift = "n/a" if r["lift"] is None else f"{100 * r['lift']:+.1f}%"
        ci = r.get("lift_ci")
        if ci:
            lift += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
        p = "n/a" if r["p_value"] is None else f"{r['p_value']:.4f}"
        table.add_row(r["label"], f"{r['observed']:.4f}", f"{r['random']:.4f}", lift, p,
                      f"{100 * r['paper']['lift']:+.1f}%")  # fmt: skip
    cli.out_console.print(table)


@study_app.command()
def perturb(
    model: str = cli.ModelOpt,
    device: str = cli.DeviceOpt,
    problems: str = ProblemsOpt,
    n: int = NOpt,
    temperature: float = TempOpt,
    seed: int = SeedOpt,
    max_new_tokens: int = MaxNewOpt,
    batch_size: int = BatchOpt,
    chat: bool = cli.ChatOpt,
    records: Path = RecordsOpt,
    out: Path = typer.Option(Path("study-perturb"), "--out", "-o", help="Output directory (reruns resume)."),
    top_k: int = typer.Option(3, "--top-k", help="Alternative next tokens forced at each position."),
    horizon: int = typer.Option(64, "--horizon", help="Tokens greedy-decoded after the forced token."),
    margin: int = typer.Option(5, "--margin", help="Positions at least this far from both response ends."),
    reference: str = typer.Option(
        "greedy", "--reference", help="greedy (greedy continuation of the original token) or sampled."
    ),
    bootstrap: int = BootOpt,
    layers: str = cli.LayersOpt,
    window: int = cli.WindowOpt,
    fai_horizon: str = cli.HorizonOpt,
    head_quantile: float = cli.QuantileOpt,
    heads: Path = cli.HeadsOpt,
    sinks: str = cli.SinksOpt,
    sink_tokens: int = cli.SinkTokensOpt,
    reuse_trials: Path = typer.Option(
        None,
        "--reuse-trials",
        help="trials.jsonl of an earlier run on the same responses and settings: positions perturbed "
        "there are not decoded again (e.g. the --sinks keep run for an exclude run).",
    ),
) -> None:
    """Table 1: force the top-k alternatives at a high- and a low-FAI position, compare continuations."""
    from attnrhythm.studies.perturb import PerturbConfig
    from attnrhythm.studies.run import run_perturb

    config = PerturbConfig(top_k=top_k, horizon=horizon, margin=margin, reference=reference)
    if bootstrap < 0:
        raise AttnRhythmError(f"bad --bootstrap {bootstrap}: it must be >= 0")
    started = time.perf_counter()
    lm, tokenizer, recs, meta = _prepare(
        model=model, device=device, problems=problems, n=n, temperature=temperature, seed=seed,
        max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, records=records, out=out,
        layers=layers, window=window, fai_horizon=fai_horizon, head_quantile=head_quantile,
        proximity=4, receivers=None, need_model=True, heads=heads, sinks=sinks, sink_tokens=sink_tokens,
    )  # fmt: skip
    with cli.progress() as progress:
        task = progress.add_task("perturbing", total=len(recs))
        results = run_perturb(
            lm, tokenizer, recs, out, config=config, bootstrap=bootstrap, seed=seed, run=meta,
            reuse=reuse_trials,
            progress=lambda _label, done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    s = results["summary"]
    from rich.table import Table

    table = Table(title=f"Perturbation at anchors ({s['trials']} trials, {s['skipped']} skipped)")
    for col in ("measure", "ours", "95% CI", "paper"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    def ci(c):
        return "n/a" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"

    paper = s["paper"]
    table.add_row("Jaccard at high-FAI position", fmt(s["jaccard_high"]), ci(s["jaccard_high_ci"]),
                  f"{paper['jaccard_high']:.3f}")  # fmt: skip
    table.add_row("Jaccard at low-FAI position", fmt(s["jaccard_low"]), ci(s["jaccard_low_ci"]),
                  f"{paper['jaccard_low']:.3f}")  # fmt: skip
    table.add_row("Pr(high < low)", fmt(s["pr_high_lower"]), ci(s["pr_high_lower_ci"]),
                  f"{paper['pr_high_lower']:.3f}")  # fmt: skip
    cli.out_console.print(table)
    cli.console.print(
        f"wrote {out}/results.json, results.md, perturb.png ({time.perf_counter() - started:.0f} s)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
