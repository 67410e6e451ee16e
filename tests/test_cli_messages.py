"""What the command line says: help with brackets and defaults, one clear line for each mistake."""

from __future__ import annotations

import json
import re
import time

import pytest
import typer
from cli_helpers import one_error_line, run

from attnrhythm.cli import app
from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError
from attnrhythm.records import read_inputs
from attnrhythm.schema import empty_metrics
from attnrhythm.train.runs import TrainSettings, no_signal_warning


def _commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    out = [[]]
    for name, command in root.commands.items():
        out.append([name])
        for sub in getattr(command, "commands", {}):
            out.append([name, sub])
    return out


def _help(capsys, args: list[str]) -> str:
    code, stdout, err = run(capsys, *args, "--help")
    assert code == 0, err
    return " ".join(stdout.split())  # one line: wrapped help joined


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["analyze"], "local/global [layer, head] lists"),
        (["study", "couplings"], "a WAAD peak in [s-lag, s] for FAI peak s"),
        (["train"], "rg:NAME[:KEY=VALUE,...]"),
        (["eval"], "rg:NAME[:KEY=VALUE,...]"),
    ],
)
def test_help_keeps_its_brackets(capsys, args, needle):
    assert needle in _help(capsys, args)


def test_every_help_shows_the_defaults(capsys):
    root = typer.main.get_command(app)
    for args in _commands():
        text = _help(capsys, args)
        command = root
        for name in args:
            command = command.commands[name]
        for param in command.params:
            if param.param_type_name != "option" or param.is_flag or "--help" in param.opts:
                continue
            if param.default is None and not isinstance(param.show_default, str):
                continue  # no default: the help says what happens without it
            flag = max(param.opts, key=len)
            shown = re.search(re.escape(flag) + r".*?\[default: ([^\]]+)\]", text)
            assert shown, (args, flag)


def test_install_hints_keep_their_brackets(capsys, monkeypatch):
    import importlib

    from attnrhythm.tasks import gym

    real = importlib.import_module

    def without_reasoning_gym(name, *a, **k):
        if name == "reasoning_gym":
            raise ImportError("No module named 'reasoning_gym'")
        return real(name, *a, **k)

    monkeypatch.setattr(gym.importlib, "import_module", without_reasoning_gym)
    code, _, err = run(capsys, "eval", "--task", "rg:basic_arithmetic")
    assert code != 0 and "pip install 'attnrhythm[tasks]'" in one_error_line(err)


def test_error_ranges_keep_their_brackets(capsys, tmp_path):
    bad = tmp_path / "heads.json"
    bad.write_text(json.dumps({"local": 1}), encoding="utf-8")
    code, _, err = run(capsys, "analyze", "--prompt", "a", "--response", "b c", "--heads", bad,
                       "--out", tmp_path / "x.jsonl")  # fmt: skip
    assert code != 0 and "[layer, head] pairs" in one_error_line(err)


def test_out_naming_a_directory_is_one_line_and_leaves_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "--prompt", "a", "--response", "b c", "--out", tmp_path)
    assert code != 0 and "is a directory" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_binary_input_is_one_line(capsys, tmp_path):
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(bytes(range(256)) * 40)
    code, _, err = run(capsys, "analyze", "--input", binary, "--out", tmp_path / "x.jsonl")
    assert code != 0 and "has no readable line" in one_error_line(err)


def test_many_bad_lines_give_a_few_lines_and_a_summary(capsys, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b c"}\n' + b"\xff\xfe not json\n" * 30)
    items = read_inputs(path)
    errors = [item.error for item in items if item.error]
    opts.report_skipped(errors, total=len(items))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 6 and lines[-1].startswith("skipped 25 more lines (30 of 31 lines")


def test_progress_prints_lines_when_not_a_terminal(capsys):
    assert isinstance(opts.progress(), opts.LineProgress)  # pytest's stderr is no terminal
    bar = opts.LineProgress(opts.console, quiet_seconds=0)  # (by default quick work prints nothing)
    with bar:
        task = bar.add_task("analysing", total=40)
        for done in range(1, 41):
            bar.update(task, completed=done, total=40)
    lines = capsys.readouterr().err.splitlines()
    assert (
        len(lines) == 10
        and lines[0].startswith("analysing: 4/40")
        and lines[-1].startswith("analysing: 40/40")
    )


def test_long_work_without_a_bar_says_what_it_does_in_a_log(capsys):
    with opts.working("generating and analysing 3 answers ...", quiet_seconds=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "generating and analysing 3 answers ..."
    assert lines[1].startswith("generating and analysing 3 answers: done (") and len(lines) == 2
    with pytest.raises(AttnRhythmError):  # quick work or an early error: nothing but the error
        with opts.working("rendering [2] traces ..."):
            raise AttnRhythmError("bad")
    assert capsys.readouterr().err == ""


def test_a_metric_empty_for_every_token_is_named_with_the_fix():
    records = [{"metrics": {"waad": [0.1, 0.2, 0.3], "fai": [None, None, None], "delta": [0.1, 0.1, None]}}]
    (line,) = empty_metrics(records, (1_000_000, None))
    assert "FAI is null for every token" in line and "1000000:end" in line
    assert "--fai-horizon 1:end" in line  # 3-token responses: the default 10:50 would not fit either
    records[0]["metrics"]["fai"][0] = 0.5
    assert empty_metrics(records, (1_000_000, None)) == []


def test_analyze_warns_when_the_horizon_empties_fai(capsys, tmp_path, embedded_dir):
    out = tmp_path / "r.jsonl"
    args = ["--prompt", "What is 2+3?", "--response", "2 plus 3 is 5.", "--fai-horizon", "1000000:end"]
    code, _, err = run(capsys, "analyze", "--model", embedded_dir, *args, "--out", out)
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "FAI is null for every token" in warning[0], err


def test_no_reward_signal_is_a_warning():
    flat = [{"step": s, "reward_mean": 0.0, "reward_std": 0.0} for s in (1, 2, 3)]
    assert "no reward signal in the last 3 step(s)" in no_signal_warning(flat)
    assert no_signal_warning([*flat[:2], {"step": 3, "reward_mean": 0.5, "reward_std": 0.2}]) is None
    assert "last 2 step(s)" in no_signal_warning(flat[:2])  # a short run: all of its steps


@pytest.mark.parametrize("task", ["countdown", "wordproblems", "arithmetic"])
def test_every_built_in_task_builds_its_default_training_set(task):
    settings = TrainSettings(task=task)
    examples = settings.make_task().examples(settings.n_train, seed=settings.data_seed)
    assert len(examples) == settings.n_train
    assert len({ex["prompt"] for ex in examples}) == settings.n_train


def test_the_math_task_says_what_it_needs():
    with pytest.raises(AttnRhythmError, match="needs source="):
        TrainSettings(task="math")
