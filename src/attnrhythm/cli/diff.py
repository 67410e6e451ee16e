"""``attnrhythm diff A B``: the rhythm of the same traces under two models (or two records files)."""

from __future__ import annotations

from pathlib import Path

import typer

from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError


def side_kind(spec: str) -> str:
    """'records' for a records JSONL file, 'model' for a model spec (refusing a missing .jsonl)."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") and not path.exists():
        raise AttnRhythmError(f"records file {spec} does not exist: check the path (or pass a model spec)")
    return "records" if path.is_file() and path.suffix != ".gguf" else "model"


def register(app: typer.Typer) -> None:
    """Add the ``diff`` command to ``app``."""

    @app.command()
    def diff(
        a: str = typer.Argument(..., help="Side A: a model spec (as --model of analyze) or a records JSONL."),
        b: str = typer.Argument(..., help="Side B: a model spec or a records JSONL (the same kind as A)."),
        traces: Path = typer.Option(
            None,
            "--traces",
            help='With two models: JSONL of {"prompt", "response"} lines or analyze records (their '
            "input_ids are used as they are).",
        ),
        out: Path = typer.Option(Path("attnrhythm-diff.json"), "--out", "-o", help="Output JSON (atomic)."),
        report: Path = typer.Option(
            None, "--report", help="Also write an offline HTML page with both rhythms of each trace aligned."
        ),
        keep: Path = typer.Option(
            None, "--keep", help="With two models: write both sides' records to DIR/a.jsonl, DIR/b.jsonl "
            "(reruns resume).",
        ),
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
        seed: int = typer.Option(0, "--seed", help="Seed of the random credit baseline."),
        batch_size: int = typer.Option(4, "--batch-size", help="Traces per forward pass."),
        chat: bool = opts.ChatOpt,
    ) -> None:
        """Compare the rhythm of the same traces on two sides: role Jaccards, FAI/WAAD Spearman,
        head-class changes, gamma change; per trace and overall.

        Sides: two models (each trace of --traces analysed under both, the same settings).

        Or: two records files of the same traces (matched by key). Token sequences must be equal.
        """
        from rich.markup import escape

        from attnrhythm.diff import diff_models, diff_records

        kinds = {side_kind(a), side_kind(b)}
        if kinds == {"records"}:
            if traces is not None or keep is not None:
                raise AttnRhythmError("--traces and --keep are for two models: records files are the traces")
            result = diff_records(a, b)
        elif kinds == {"model"}:
            if traces is None:
                raise AttnRhythmError(
                    "two models need --traces FILE.jsonl (prompt/response lines or records)"
                )
            config = opts.analysis_config(
                layers=layers, window=window, fai_horizon=fai_horizon, head_quantile=head_quantile,
                heads=heads, q=q, amp=amp, alpha=alpha, k=k, tau_waad=tau_waad, tau_delta=tau_delta,
                selection=selection, seed=seed, tile_size=None, save_maps=None,
            )  # fmt: skip
            with opts.progress() as progress:
                task = progress.add_task("analysing", total=None)

                def step(side: str, done: int, total: int) -> None:
                    progress.update(task, description=f"side {side}", completed=done, total=total)

                result = diff_models(
                    a, b, traces, config, chat=chat, batch_size=batch_size, device=device, keep=keep,
                    on_progress=step,
                )  # fmt: skip
        else:
            raise AttnRhythmError("pass two models or two records files, not one of each")
        result.save(out)
        show(result.summary, escape)
        opts.console.print(f"wrote {out}", highlight=False)
        if report is not None:
            from attnrhythm.views.diff import write_diff_report

            write_diff_report(result, report)
            opts.console.print(f"report: {report}", highlight=False)


def show(summary: dict, escape) -> None:
    """The overall numbers and the head transition table as rich tables."""
    from rich.table import Table

    overall = summary["overall"]

    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    table = Table(title=f"rhythm diff over {overall['traces']} trace(s), {overall['tokens']} tokens")
    for col in ("measure", "mean over traces", "pooled / median"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, value in overall["jaccard"].items():
        table.add_row(f"Jaccard {name}", num(value["mean"]), num(value["pooled"]))
    for name, value in overall["spearman"].items():
        table.add_row(f"Spearman {name.upper()}", num(value["mean"]), num(value["median"]))
    for name, value in overall["gamma"].items():
        table.add_row(f"gamma {escape(name)}: mean change", num(value["mean_change"]), "")
    opts.out_console.print(table)
    heads = overall["heads"]
    moves = Table(title=f"head classes A -> B ({heads['changed']} of {heads['count']} changed)")
    moves.add_column("A \\ B")
    classes = list(heads["transitions"])
    for name in classes:
        moves.add_column(name, justify="right")
    for name in classes:
        moves.add_row(name, *(str(heads["transitions"][name][c]) for c in classes))
    opts.out_console.print(moves)
