"""``attnrhythm demo``, ``report`` and ``figure``: what the records look like."""

from __future__ import annotations

from pathlib import Path

import typer

from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError


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
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", help="Tokens generated per answer (an answer that reaches it is marked cut)."
    ),
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
    with opts.working(f"generating and analysing {n} answers ..."):
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
        opts.tagged("skipped", err)
    by_key = {str(r.get("key")): r for r in iter_jsonl(out)}
    records = [by_key[item.key] for item in items if item.key in by_key]
    if not records:
        raise AttnRhythmError("no answer could be analysed: raise --max-new-tokens")
    show(opts.out_console, records, tokens=tokens, rows=rows, max_new_tokens=max_new_tokens)
    report_path = write_report(records, out.with_suffix(".html"))
    opts.out_console.print(
        f"\nrecords: {out.resolve()}  (schema: docs/records.md)", highlight=False
    )
    opts.out_console.print(
        f"report:  {report_path.resolve()}  (open it in a browser; no network needed)", highlight=False
    )


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
    with opts.working(f"rendering {len(recs)} trace(s) ..."):
        page = render_html(recs, model=lm, tokenizer=tokenizer, span=span, source=str(records), heads=corpus)
        path = write_page(page, out)
    size = path.stat().st_size / 1024
    opts.console.print(f"wrote {path} ({size:,.0f} KiB, {len(recs)} trace(s))", highlight=False)


def figure(
    records: Path = typer.Argument(..., help="Records JSONL written by `attnrhythm analyze`."),
    index: int = typer.Option(0, "--index", help="Which record (0-based, the report's #)."),
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
