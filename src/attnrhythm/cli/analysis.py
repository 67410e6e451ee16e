"""``attnrhythm analyze`` and ``attnrhythm heads``: traces to records, records to a corpus head set."""

from __future__ import annotations

from pathlib import Path

import typer

from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError


def analyze(
    prompt: str = typer.Option(None, "--prompt", help="Prompt text (with --response)."),
    response: str = typer.Option(None, "--response", help="Response text to analyse."),
    input: Path = typer.Option(
        None, "--input", "-i", help='JSONL with {"prompt", "response"} or {"prompt"} lines.'
    ),
    out: Path = typer.Option(
        Path("attnrhythm.jsonl"), "--out", "-o", help="Output JSONL (atomic; reruns resume)."
    ),
    model: str = opts.ModelOpt,
    device: str = opts.DeviceOpt,
    layers: str = opts.LayersOpt,
    window: int = opts.WindowOpt,
    fai_horizon: str = opts.HorizonOpt,
    head_quantile: float = opts.QuantileOpt,
    heads: Path = opts.HeadsOpt,
    sinks: str = opts.SinksOpt,
    sink_tokens: int = opts.SinkTokensOpt,
    q: float = opts.QOpt,
    amp: float = opts.AmpOpt,
    alpha: float = opts.AlphaOpt,
    k: int = opts.KOpt,
    tau_waad: float = opts.TauWOpt,
    tau_delta: float = opts.TauDOpt,
    selection: str = opts.SelectionOpt,
    gamma_norm: str = opts.GammaNormOpt,
    seed: int = typer.Option(0, "--seed", help="Seed for sampling and the random credit baseline."),
    batch_size: int = typer.Option(4, "--batch-size", help="Traces per forward pass."),
    tile_size: int = opts.TileOpt,
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", help="Tokens to generate for prompt-only lines."
    ),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature (0: greedy)."),
    chat: bool = opts.ChatOpt,
    save_maps: str = opts.SaveMapsOpt,
    proximity: int = opts.ProximityOpt,
    receivers: int = opts.ReceiversOpt,
    report: Path = typer.Option(
        None, "--report", help="Also write an offline HTML report of all records in --out to this file."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local: this process (or each rank of torchrun/accelerate launch); ray: a Ray cluster "
        "(pip install 'attnrhythm[ray]').",
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to join (auto: the one `ray start` runs on this node); default: a new local one.",
    ),
    ray_actors: int = typer.Option(1, "--ray-actors", help="Ray actors, one model each."),
    ray_cpus: float = typer.Option(1.0, "--ray-cpus", help="CPUs each Ray actor holds."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="GPUs each Ray actor holds (1: one GPU each)."),
) -> None:
    """Analyse prompt+response traces: head spans and classes, WAAD, FAI, entropy, roles, gamma."""
    from attnrhythm.distributed import run_analyze
    from attnrhythm.records import InputItem, check_file_target, check_text, iter_jsonl, read_inputs
    from attnrhythm.runner import GenerationConfig
    from attnrhythm.schema import empty_metrics

    if prompt is not None:
        check_text(prompt, "--prompt")
    if response is not None:
        check_text(response, "--response")
    if input is None and prompt is None:
        raise AttnRhythmError("nothing to analyse: pass --prompt and --response, or --input FILE.jsonl")
    if input is not None and (prompt is not None or response is not None):
        raise AttnRhythmError("pass either --input or --prompt/--response, not both")
    if input is None and response is None:
        raise AttnRhythmError("--prompt needs --response (or put prompt-only lines in --input to generate)")
    if engine not in ("local", "ray"):
        raise AttnRhythmError(f"unknown --engine {engine!r}: use local or ray")
    check_file_target(out)
    if report is not None:
        check_file_target(report, "report.html")
    config = opts.analysis_config(
        layers=layers,
        window=window,
        fai_horizon=fai_horizon,
        head_quantile=head_quantile,
        heads=heads,
        sinks=sinks,
        sink_tokens=sink_tokens,
        q=q,
        amp=amp,
        alpha=alpha,
        k=k,
        tau_waad=tau_waad,
        tau_delta=tau_delta,
        selection=selection,
        gamma_norm=gamma_norm,
        seed=seed,
        tile_size=tile_size,
        save_maps=save_maps,
        proximity=proximity,
        receiver_count=receivers,
    )
    items = (
        read_inputs(input) if input is not None else [InputItem(0, {"prompt": prompt, "response": response})]
    )
    generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    with opts.progress() as progress:
        task = progress.add_task("analysing", total=len(items))
        kwargs = dict(
            model=model,
            device=device,
            config=config,
            out=out,
            batch_size=batch_size,
            chat=chat,
            generation=generation,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
        if engine == "ray":  # the same batches on a pool of Ray actors (attnrhythm.ray_engine)
            from attnrhythm.ray_engine import RayResources, analyze_ray

            resources = RayResources(address=ray_address, actors=ray_actors, cpus=ray_cpus, gpus=ray_gpus)
            summary = analyze_ray(items, resources=resources, **kwargs)
        else:  # one process, or this rank's share under torchrun / accelerate launch (attnrhythm.distributed)
            summary = run_analyze(items, load=opts.load, **kwargs)
    if input is None and summary.errors:
        raise AttnRhythmError(summary.errors[0])
    opts.report_skipped(summary.errors, total=len(items))
    final = summary.out == out  # False on the ranks of a launch whose part rank 0 merged
    for problem in empty_metrics(iter_jsonl(out), config.fai_horizon) if final else ():
        opts.tagged("warning:", problem, "yellow")
    resumed = f" ({summary.resumed} already there)" if summary.resumed else ""
    opts.console.print(f"wrote {summary.written} record(s) to {summary.out}{resumed}", highlight=False)
    if summary.merged is not None:
        opts.console.print(f"merged {summary.merged} record(s) into {out}", highlight=False)
    if report is not None and final and out.exists():
        from attnrhythm.records import read_records
        from attnrhythm.views.report import write_report

        write_report(read_records(out), report, span=save_maps)
        opts.console.print(f"report: {report}", highlight=False)
    if summary.errors:
        raise typer.Exit(1)


def heads(
    records: list[Path] = typer.Argument(
        ..., help="Records JSONL file(s) written by analyze or a study (same --layers)."
    ),
    out: Path = typer.Option(Path("heads.json"), "--out", "-o", help="Output head set (JSON)."),
    head_quantile: float = typer.Option(
        None, "--head-quantile", help="Share of heads called local (and global); default: the records' own."
    ),
) -> None:
    """Corpus head set: d[l,h] averaged over records, classes of the mean, per-head stability.

    The file is accepted by --heads in analyze, train and the studies.
    """
    from rich.table import Table

    from attnrhythm.headsets import corpus_heads, write_heads_file
    from attnrhythm.records import read_records

    recs: list = []
    for path in records:
        recs.extend(read_records(path))
    source = ", ".join(str(p) for p in records)
    data = corpus_heads(recs, head_quantile, source=source)
    write_heads_file(data, out)
    table = Table(title=f"corpus heads over {data['traces']} traces (head quantile {data['head_quantile']})")
    for col in ("class", "layer", "head", "mean d", "local in", "global in"):
        table.add_column(col, justify="left" if col == "class" else "right")
    pos = {layer: i for i, layer in enumerate(data["layers"])}
    stab = data["stability"]
    for name in ("local", "global"):
        for layer, head in data[name]:
            r = pos[layer]
            table.add_row(
                name,
                str(layer),
                str(head),
                f"{data['distance'][r][head]:.2f}",
                f"{100 * stab['local'][r][head]:.0f}%",
                f"{100 * stab['global'][r][head]:.0f}%",
            )
    opts.out_console.print(table)
    keeps = data["keeps_class"]
    opts.out_console.print(
        f"corpus local heads are local in {100 * keeps['local']:.1f}% of traces on average, global heads "
        f"global in {100 * keeps['global']:.1f}%",
        highlight=False,
    )
    opts.console.print(f"wrote {out}", highlight=False)
