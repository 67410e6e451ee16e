"""Options, consoles and helpers shared by every command group (one definition each)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from attnrhythm.config import AnalysisConfig, ModelSettings
from attnrhythm.settings import build, default, field_of, flag_of

# markup off: messages and help carry user text and brackets ("pip install 'attnrhythm[tasks]'",
# "[layer, head] pairs") that must print as written; styles come from rich Text objects
console = Console(stderr=True, markup=False)
out_console = Console(markup=False)


def tagged(tag: str, text: str, style: str = "red", *, to: Console | None = None) -> None:
    """One line ``TAG text`` on stderr (or ``to``), the tag styled, the text exactly as given."""
    (to or console).print(Text(tag, style=style), text, highlight=False, soft_wrap=True)


def cli_default(value: Any) -> Any:
    """A setting's default as the command line writes it (the FAI horizon (10, 50) as ``10:50``)."""
    if isinstance(value, tuple):
        return ":".join("end" if v is None else str(v) for v in value)
    return value


def option(cls: type, name: str, *aliases: str, unset: bool = False, **changes: Any) -> Any:
    """A ``typer.Option`` made from the declaration of setting ``name`` in ``cls`` (flat name).

    Flag, short form, default and help text come from the one declaration
    (:func:`attnrhythm.settings.setting`). ``unset``: the option defaults to None (a flag not given
    leaves a settings file's value alone) and the help still shows the setting's default.
    ``aliases`` are further flag names; ``changes`` override typer.Option arguments.
    """
    f = field_of(cls, name)
    names = [flag_of(f), *aliases] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    value = cli_default(default(cls, name))
    kwargs: dict[str, Any] = {"help": f.metadata["help"], "show_default": True}
    if unset:
        kwargs["show_default"] = (
            "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )
        value = None
    kwargs.update(changes)
    return typer.Option(value, *names, **kwargs)


# Options shared by the commands (one definition each, from the settings' declarations).
ModelOpt = option(ModelSettings, "model")
DeviceOpt = option(ModelSettings, "device")
LayersOpt = option(AnalysisConfig, "layers")
WindowOpt = option(AnalysisConfig, "window")
HorizonOpt = option(AnalysisConfig, "fai_horizon")
QuantileOpt = option(AnalysisConfig, "head_quantile")
HeadsOpt = option(AnalysisConfig, "heads")
QOpt = option(AnalysisConfig, "q")
AmpOpt = option(AnalysisConfig, "amp")
AlphaOpt = option(AnalysisConfig, "alpha")
KOpt = option(AnalysisConfig, "k")
TauWOpt = option(AnalysisConfig, "tau_waad")
TauDOpt = option(AnalysisConfig, "tau_delta")
SelectionOpt = option(AnalysisConfig, "selection")
TileOpt = option(AnalysisConfig, "tile_size")
ProximityOpt = option(AnalysisConfig, "proximity")
ReceiversOpt = option(AnalysisConfig, "receiver_count")
SaveMapsOpt = option(AnalysisConfig, "save_maps")
ChatOpt = typer.Option(True, "--chat/--no-chat", help="Wrap the prompt in the model's chat template.")


def analysis_config(**values: Any) -> AnalysisConfig:
    """AnalysisConfig from flat flag values (credit flags go to its CreditConfig; --heads is read there)."""
    return build(AnalysisConfig, values, source="the flags")


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
