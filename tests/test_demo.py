"""`attnrhythm demo`: one screen per answer (roles coloured, a summary), the report beside the records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_helpers import one_error_line, run, save_tiny_llama
from rich.console import Console
from test_report import make_record

from attnrhythm.views.demo import legend, response_text, role_marks, show, token_style


def _console(color: bool) -> Console:
    return Console(record=True, width=100, force_terminal=color, color_system="truecolor" if color else None)


def test_response_is_coloured_by_role():
    record = make_record(40)
    text = response_text(record)
    r0 = record["response_start"]
    assert text.plain == "".join(record["tokens"][r0:])
    marks = role_marks(record, 40)
    spans = {(s.start, s.end): str(s.style) for s in text.spans}
    offset = 0
    for tok, mark in zip(record["tokens"][r0:], marks):
        if mark:
            assert spans[(offset, offset + len(tok))] == token_style(mark)
        offset += len(tok)
    # a dominated anchor shows as dominated (its own colour), a preplan anchor as both
    assert token_style("AD") == token_style("D") and "underline" in token_style("PA")
    assert "on magenta" in token_style("PA")


def test_plain_output_marks_roles_with_brackets():
    record = make_record(40)
    text = response_text(record, color=False).plain
    anchors = record["roles"]["anchor"]
    assert text.count("[") + text.count("{") >= len(anchors)
    assert "[anchor]" in legend(False).plain and "{dominated anchor}" in legend(False).plain


@pytest.mark.parametrize("color", [True, False])
def test_show_fits_one_screen_per_answer(color):
    records = [make_record(96, seed=s, key=f"demo-{s}", answer=7) for s in range(3)]
    console = _console(color)
    show(console, records)
    out = console.export_text()
    assert out.count("roles:") == 1  # the legend once
    assert out.count("summary") == 1 and all(f"demo-{s}" in out for s in range(3))
    lines = out.splitlines()
    # 96 tokens of text plus the rule, question and top-token lines: well inside a 40-line screen each
    assert len(lines) < 3 * 20 + 12, out
    assert "strongest anchors" in out


def test_tokens_flag_adds_the_per_token_table():
    record = make_record(30, key="x")
    console = _console(False)
    show(console, [record], tokens=True, rows=5)
    out = console.export_text()
    assert "γ coupled" in out and "25 more tokens" in out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir)


def test_demo_writes_records_and_report(capsys, tiny_dir, tmp_path):
    out = tmp_path / "demo.jsonl"
    code, stdout, err = run(
        capsys, "demo", "--model", tiny_dir, "--n", "2", "--max-new-tokens", "12", "--out", out
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["maps"] is not None for r in records)
    page = tmp_path / "demo.html"
    assert page.is_file() and "ar-t1" in page.read_text()
    assert f"report:  {page.resolve()}" in stdout.replace("\n", "")
    assert stdout.count("roles:") == 1 and "summary" in stdout
    # a rerun with the same settings resumes and shows the same answers
    code, again, _ = run(
        capsys, "demo", "--model", tiny_dir, "--n", "2", "--max-new-tokens", "12", "--out", out
    )
    assert code == 0 and again.count("strongest anchors") == 2


def test_demo_out_must_not_be_the_report(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--out", tmp_path / "x.html")
    assert code != 0 and ".jsonl" in one_error_line(err)


def test_summary_drops_columns_that_do_not_vary_and_marks_cut_answers():
    from attnrhythm.views.demo import summary_table

    right = make_record(96, seed=0, key="a", answer=26, response="so 26", generated=True)
    wrong = make_record(60, seed=1, key="b", answer=26, response="so 27", generated=True)
    table, note = summary_table([right, wrong], max_new_tokens=96)
    headers = [c.header for c in table.columns]
    assert headers[:4] == ["#", "tokens", "ended", "correct"]  # 96 vs 60 tokens, cut vs done, yes vs no
    cells = {c.header: list(c._cells) for c in table.columns}
    assert cells["ended"] == ["cut", "done"] and cells["correct"] == ["yes", "no"]
    for name in headers[1:]:
        assert len(set(cells[name])) > 1, name  # every column shown varies between answers
    same = make_record(96, seed=0, key="c", answer=26, response="so 26", generated=True)
    table, note = summary_table([right, same], max_new_tokens=200)
    assert [c.header for c in table.columns] == ["#"]
    assert note.startswith("same for every answer: tokens 96, ended done, correct yes")


@pytest.mark.parametrize("markup", [True, False])  # False: the CLI's console (cli.options.out_console)
def test_piped_output_is_plain_and_readable(markup):
    records = [
        make_record(96, seed=s, key=f"demo-{s}-[x]", answer=7, response="7", generated=True) for s in range(2)
    ]
    pipe = io.StringIO()
    show(Console(file=pipe, width=80, markup=markup), records, max_new_tokens=96)  # a file: what a pipe gets
    out = pipe.getvalue()
    assert "\x1b[" not in out  # no escape codes in a pipe
    assert "demo-0-[x]" in out and "#1 demo-0-[x]" in out  # brackets in keys survive
    assert "[bold]" not in out and "[/" not in out  # no markup tag shown as text
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "cut" in out and "raise it" in out  # 96 tokens at --max-new-tokens 96
