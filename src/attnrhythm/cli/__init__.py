"""The ``attnrhythm`` command line (typer + rich). ``attnrhythm COMMAND --help`` is the manual."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError

try:  # typer >= 0.26 vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer with the separate click package
    from click import exceptions as click_exceptions

# typer >= 0.26 has Abort in typer.exceptions; older click-based typer in click.exceptions
_ABORT = getattr(typer, "Abort", None) or getattr(click_exceptions, "Abort", KeyboardInterrupt)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Read the preplan-and-anchor rhythm of a causal LM from its attention, in one streaming pass.",
)
@app.command()
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
    save_maps: str = typer.Option(
        None, "--save-maps", help="Keep the mean local/global maps of response window START:END (<= 512)."
    ),
    proximity: int = typer.Option(4, "--proximity", help="Receiver heads: count attention from >= this far."),
    receivers: int = typer.Option(
        None, "--receivers", help="Receiver heads to keep (default: as many as global heads; 0: off)."
    ),
    report: Path = typer.Option(
        None, "--report", help="Also write an offline HTML report of all records in --out to this file."
    ),
) -> None:
    """Analyse prompt+response traces: head spans and classes, WAAD, FAI, entropy, roles, gamma."""
    from attnrhythm.records import InputItem, check_text, read_inputs
    from attnrhythm.runner import GenerationConfig, analyze_items

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
    config = opts.analysis_config(
        layers=layers,
        window=window,
        fai_horizon=fai_horizon,
        head_quantile=head_quantile,
        heads=heads,
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
    )
    items = (
        read_inputs(input) if input is not None else [InputItem(0, {"prompt": prompt, "response": response})]
    )
    lm, tokenizer = opts.load(model, device)
    with opts.progress() as progress:
        task = progress.add_task("analysing", total=len(items))
        summary = analyze_items(
            items,
            lm,
            tokenizer,
            config,
            out=out,
            batch_size=batch_size,
            chat=chat,
            generation=GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if input is None and summary.errors:
        raise AttnRhythmError(summary.errors[0])
    for err in summary.errors:
        opts.console.print(f"[red]skipped[/red] {err}", highlight=False)
    resumed = f" ({summary.resumed} already there)" if summary.resumed else ""
    opts.console.print(f"wrote {summary.written} record(s) to {out}{resumed}", highlight=False)
    if report is not None and out.exists():
        from attnrhythm.records import read_records
        from attnrhythm.views.report import write_report

        write_report(read_records(out), report, span=save_maps)
        opts.console.print(f"report: {report}", highlight=False)
    if summary.errors:
        raise typer.Exit(1)


@app.command()
def demo(
    model: str = opts.ModelOpt,
    device: str = opts.DeviceOpt,
    out: Path = typer.Option(
        Path("attnrhythm-demo.jsonl"),
        "--out",
        "-o",
        help="Where to write the records; the HTML report goes beside it (same name, .html).",
    ),
    n: int = typer.Option(3, "--n", help="How many built-in problems to answer (1-6)."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", help="Tokens generated per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0: greedy)."),
    tokens: bool = typer.Option(False, "--tokens", help="Also print the per-token table of each answer."),
    rows: int = typer.Option(0, "--rows", help="With --tokens: token rows per table (0: all)."),
) -> None:
    """Answer built-in math word problems with the model, analyse the answers, show the rhythm.

    Prints each answer coloured by role and a summary table, and writes the records and an
    offline HTML report (index, curves, token strip, maps, heads) beside them.
    """
    import hashlib

    from attnrhythm.analyze import AnalysisConfig
    from attnrhythm.records import InputItem, iter_jsonl
    from attnrhythm.runner import GenerationConfig, analyze_items
    from attnrhythm.views.demo import PROBLEMS, show
    from attnrhythm.views.report import write_report

    if not 1 <= n <= len(PROBLEMS):
        raise AttnRhythmError(f"bad --n {n}: the demo has {len(PROBLEMS)} problems, pick 1..{len(PROBLEMS)}")
    if max_new_tokens < 2:
        raise AttnRhythmError(f"bad --max-new-tokens {max_new_tokens}: the analysis needs at least 2 tokens")
    page = out.with_suffix(".html")
    if page == out:
        raise AttnRhythmError(
            f"--out {out} ends in .html: give the records a .jsonl name (the report is .html)"
        )
    lm, tokenizer = opts.load(model, device)
    # keys name the settings, so a rerun with the same ones resumes and other settings never mix
    tag = hashlib.sha1(f"{model}|{max_new_tokens}|{temperature}".encode()).hexdigest()[:8]
    items = [
        InputItem(i + 1, {"id": f"demo-{i + 1}-{tag}", "prompt": p.question, "answer": p.answer})
        for i, p in enumerate(PROBLEMS[:n])
    ]
    config = AnalysisConfig(save_maps=(0, min(max_new_tokens, 512)))
    with opts.console.status(f"generating and analysing {n} answers ..."):
        summary = analyze_items(
            items,
            lm,
            tokenizer,
            config,
            out=out,
            batch_size=n,
            generation=GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=0),
        )
    for err in summary.errors:
        opts.console.print(f"[red]skipped[/red] {err}", highlight=False)
    by_key = {str(r.get("key")): r for r in iter_jsonl(out)}
    records = [by_key[item.key] for item in items if item.key in by_key]
    if not records:
        raise AttnRhythmError("no answer could be analysed: raise --max-new-tokens")
    show(opts.out_console, records, tokens=tokens, rows=rows)
    report_path = write_report(records, out.with_suffix(".html"))
    opts.out_console.print(
        f"\nrecords: {out.resolve()}  (schema: README, section 'Record schema')", highlight=False
    )
    opts.out_console.print(
        f"report:  {report_path.resolve()}  (open it in a browser; no network needed)", highlight=False
    )


@app.command()
def report(
    records: Path = typer.Argument(..., help="Records JSONL written by `attnrhythm analyze`."),
    out: Path = typer.Option(Path("attnrhythm-report.html"), "--out", "-o", help="Output HTML file."),
    span: str = typer.Option(
        None,
        "--span",
        help="Response window START:END of the attention maps (default: the record's saved maps, "
        "else 0:128; at most 512 tokens).",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Recompute maps the records lack with this model (as in analyze)."
    ),
    device: str = opts.DeviceOpt,
    heads: Path = typer.Option(
        None,
        "--heads",
        help="Corpus head set (heads.json of `attnrhythm heads`) whose stability the index shows "
        "(default: computed from these records when there are 2 or more).",
    ),
) -> None:
    """Write one self-contained HTML report (no network needed): index, curves, tokens, maps, heads."""
    from attnrhythm.headsets import load_corpus_heads
    from attnrhythm.views.report import load_records, parse_span, render_html, write_page

    recs = load_records(records)
    parse_span(span)  # a bad span fails before a model is loaded
    corpus = load_corpus_heads(heads) if heads is not None else None
    lm = tokenizer = None
    if model is not None:
        lm, tokenizer = opts.load(model, device)
    with opts.console.status(f"rendering {len(recs)} trace(s) ..."):
        page = render_html(recs, model=lm, tokenizer=tokenizer, span=span, source=str(records), heads=corpus)
        path = write_page(page, out)
    size = path.stat().st_size / 1024
    opts.console.print(f"wrote {path} ({size:,.0f} KiB, {len(recs)} trace(s))", highlight=False)


@app.command()
def figure(
    records: Path = typer.Argument(..., help="Records JSONL written by `attnrhythm analyze`."),
    index: int = typer.Option(0, "--index", "-i", help="Which record (0-based, the report's #)."),
    out: Path = typer.Option(
        Path("attnrhythm-figure.png"), "--out", "-o", help="Output file: .png, .pdf or .svg."
    ),
    span: str = typer.Option(
        None, "--span", help="Response window START:END of the maps (default: saved maps, else 0:128)."
    ),
    curves: str = typer.Option(
        None, "--curves", help="x-range START:END of the curves (default: the whole response)."
    ),
    model: str = typer.Option(None, "--model", "-m", help="Recompute maps the record lacks with this model."),
    device: str = opts.DeviceOpt,
    dpi: int = typer.Option(200, "--dpi", help="Resolution of a .png."),
) -> None:
    """Render one trace as a static figure (matplotlib): maps, curves with peaks, head picture."""
    from attnrhythm.views.figure import check_out, parse_range, pick, trace_figure
    from attnrhythm.views.report import load_records, parse_span

    check_out(out)
    if dpi < 10:
        raise AttnRhythmError(f"bad --dpi {dpi}: use e.g. 150-300")
    recs = load_records(records)
    record = pick(recs, index, str(records))
    parse_span(span)
    parse_range(curves)
    lm = tokenizer = None
    if model is not None:
        lm, tokenizer = opts.load(model, device)
    fig = trace_figure(record, span, model=lm, tokenizer=tokenizer, curves=curves)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    opts.console.print(f"wrote {out}", highlight=False)


@app.command()
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(
            args=argv if argv is not None else sys.argv[1:], prog_name="attnrhythm", standalone_mode=False
        )
    except AttnRhythmError as err:
        opts.console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click_exceptions.ClickException as err:
        hint = f" (see `attnrhythm {err.ctx.info_name if getattr(err, 'ctx', None) else ''} --help`)"
        opts.console.print(
            f"[red]error:[/red] {err.format_message()}{hint.replace('attnrhythm attnrhythm', 'attnrhythm')}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except _ABORT:
        opts.console.print("aborted", highlight=False)
        sys.exit(130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


# sub-commands in their own modules (they read the shared options above)
from attnrhythm.cli.study import register as _register_study  # noqa: E402
from attnrhythm.cli.train import register as _register_train  # noqa: E402

_register_study(app)
_register_train(app)

if __name__ == "__main__":
    main()
