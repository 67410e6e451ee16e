"""One settings chain: each setting declared once, composed upward, flat keys mapped in one place."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from attnrhythm.cli import app
from attnrhythm.cli.options import cli_default
from attnrhythm.config import AnalysisConfig, ModelSettings
from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.config import CreditConfig
from attnrhythm.rollout.config import RhythmCreditConfig
from attnrhythm.settings import declared, default, flag_of
from attnrhythm.train.runs import TrainSettings

SRC = Path(__file__).resolve().parent.parent / "src" / "attnrhythm"


def test_the_configs_are_composed_not_copied():
    nested = {f.name: f.metadata.get("nested") for f in dataclasses.fields(RhythmCreditConfig)}
    assert nested["analysis"] is AnalysisConfig
    assert {f.name: f.metadata.get("nested") for f in dataclasses.fields(AnalysisConfig)}[
        "credit"
    ] is CreditConfig
    assert {f.name: f.metadata.get("nested") for f in dataclasses.fields(TrainSettings)}[
        "rhythm"
    ] is RhythmCreditConfig
    # no credit or analysis field is declared a second time up the chain
    own = {f.name for f in dataclasses.fields(RhythmCreditConfig)} | {
        f.name for f in dataclasses.fields(TrainSettings)
    }
    assert not own & {f.name for f in dataclasses.fields(CreditConfig)} - {"seed"}
    assert not own & {f.name for f in dataclasses.fields(AnalysisConfig)}


def test_flat_names_reach_the_nested_configs():
    config = RhythmCreditConfig(q=0.3, window=4, fai_horizon="4:end", batch_size=2, strategy="global")
    assert config.analysis.credit.q == 0.3 and config.analysis.window == 4
    assert (config.q, config.window, config.fai_horizon) == (0.3, 4, (4, None))  # read through, no copy
    assert config.analysis.receiver_count == 0  # the credit forward's own default
    assert RhythmCreditConfig(**config.flat()) == config  # the flat form goes to a verl worker and back
    with pytest.raises(AttnRhythmError, match="unknown setting 'windo'"):
        RhythmCreditConfig(windo=3)


def test_train_settings_take_flat_yaml_keys_and_rhythm_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("q: 0.25\nwindow: 6\nrhythm_options:\n  fai_horizon: [2, 8]\nseed: 7\n", encoding="utf-8")
    settings = TrainSettings.from_yaml(path)
    rhythm = settings.rhythm_config()
    assert (rhythm.q, rhythm.window, rhythm.fai_horizon) == (0.25, 6, (2, 8))
    assert rhythm.analysis.credit.seed == 7  # the random baseline follows the trainer's seed
    again = tmp_path / "again.yaml"
    settings.to_yaml(again)
    assert TrainSettings.from_yaml(again) == settings
    assert settings.replace(q=0.5).rhythm.analysis.credit.q == 0.5
    own_seed = TrainSettings(seed=1, rhythm_options={"seed": 9})
    assert own_seed.rhythm.analysis.credit.seed == 9
    assert TrainSettings.from_dict(own_seed.to_dict()).rhythm.analysis.credit.seed == 9


def test_a_heads_file_is_read_in_one_place():
    sources = {p: p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}
    readers = [p.relative_to(SRC).as_posix() for p, text in sources.items() if "read_heads_file(" in text]
    # headsets defines it (and checks a corpus file with it); config reads --heads; analyze re-exports it
    assert sorted(readers) == ["analyze.py", "config.py", "headsets.py"], readers


def test_each_default_is_written_once():
    """q = 0.4 (and its siblings) appear in one declaration, not in every layer."""
    pattern = re.compile(r"^\s*q: float = .*0\.4", re.M)
    holders = [p.name for p in SRC.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    # method/config.py: CreditConfig; studies/couplings.py: the studies' own peak quantile (--peak-q)
    assert sorted(holders) == ["config.py", "couplings.py"], holders
    assert default(TrainSettings, "q") == 0.4 and default(RhythmCreditConfig, "receiver_count") == 0


def _params(command) -> dict[str, object]:
    return {p.name: p for p in command.params}


# flags that several commands share by name but that mean each command's own thing (the sampling
# seed of a study, the batch of a generation, an output path), so their defaults differ by purpose
OWN_FLAGS = {"--seed", "--batch-size", "--max-new-tokens", "--temperature", "--n", "--out"}


def _declared_default(name: str) -> object:
    for cls in (ModelSettings, AnalysisConfig, TrainSettings):
        if name in declared(cls):
            return cli_default(default(cls, name))
    raise KeyError(name)


def test_cli_options_come_from_the_declarations():
    """Every flag named after a declared setting has its help text and default."""
    root = typer.main.get_command(app)
    commands = {name: root.commands[name] for name in ("analyze", "demo", "train", "eval")}
    commands.update({f"study {n}": c for n, c in root.commands["study"].commands.items()})
    settings = {**declared(TrainSettings), **declared(AnalysisConfig), **declared(ModelSettings)}
    checked = 0
    for cmd_name, command in commands.items():
        for param in command.params:
            for name, (_, f) in settings.items():
                flag = flag_of(f).split("/")[0]  # --chat/--no-chat
                if flag not in param.opts or flag in OWN_FLAGS:
                    continue
                checked += 1
                assert param.help == f.metadata["help"], (cmd_name, name)
                want = _declared_default(name)
                if param.default is None and want is not None:  # train: unset flags show the default
                    assert str(param.show_default).lower() == str(want).lower(), (cmd_name, name)
                else:
                    assert param.default == want, (cmd_name, name, param.default, want)
    assert checked > 40


def test_the_same_flag_means_the_same_thing_everywhere():
    root = typer.main.get_command(app)
    commands = [c for n, c in root.commands.items() if n != "study"] + list(
        root.commands["study"].commands.values()
    )
    short: dict[str, set[str]] = {}
    device_defaults = set()
    for command in commands:
        for param in command.params:
            longs = tuple(sorted(o for o in param.opts if o.startswith("--")))
            for opt in param.opts:
                if re.fullmatch(r"-[A-Za-z]", opt):
                    short.setdefault(opt, set()).add(longs[0])
            if "--device" in param.opts:
                device_defaults.add(param.default)
    assert {k: v for k, v in short.items() if len(v) > 1} == {}, short
    assert device_defaults <= {"auto", None}


def test_train_device_takes_cuda_n_and_refuses_it_where_it_cannot_hold(monkeypatch):
    import torch

    from attnrhythm.train.runs import cuda_index

    assert [cuda_index(d) for d in ("cuda:0", "cuda:3", "cuda", "cpu", "cuda:x")] == [0, 3, None, None, None]
    with pytest.raises(AttnRhythmError, match="use auto, cpu, cuda or cuda:N"):
        TrainSettings(device="gpu")
    settings = TrainSettings(device="cuda:1")  # a valid setting on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AttnRhythmError, match="no CUDA GPU: use --device cpu"):
        settings.use_cpu()
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert settings.use_cpu() is False and chosen == [1]  # GPU 1 becomes the current device
    with pytest.raises(AttnRhythmError, match=r"use cuda:0 to cuda:1"):
        TrainSettings(device="cuda:2").use_cpu()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AttnRhythmError, match="the launcher gives each process its GPU"):
        settings.use_cpu()
