"""Jupyter display: TraceResult and Report render the self-contained report in a sandboxed iframe."""

from __future__ import annotations

import html
import json
import re

import pytest
from test_report import make_record

from attnrhythm.errors import AttnRhythmError
from attnrhythm.views.report import Report, iframe


def _inner(fragment: str) -> str:
    """The page inside an iframe's srcdoc, unescaped."""
    pattern = r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" style="[^"]*" title="[^"]*"></iframe>'
    match = re.fullmatch(pattern, fragment)
    assert match, fragment[:200]
    return html.unescape(match.group(1))


def _traces(page: str) -> list[dict]:
    blocks = re.findall(r'<script type="application/json" id="ar-t\d+">(.*?)</script>', page, re.S)
    return [json.loads(b) for b in blocks]


def test_report_of_records_renders_inline():
    records = [make_record(30, seed=s, key=f"k{s}") for s in range(2)]
    fragment = Report(records, height=500)._repr_html_()
    assert "height:500px" in fragment
    page = _inner(fragment)
    assert page.startswith("<!DOCTYPE html>") and "attnrhythm report" in page
    traces = _traces(page)
    assert [t["key"] for t in traces] == ["k0", "k1"]
    assert traces[0]["tokens"] == records[0]["tokens"][records[0]["response_start"] :]
    # nothing of the page can break out of the attribute: no raw quotes or angle brackets in it
    assert '"' not in fragment.split('srcdoc="', 1)[1].split('" sandbox', 1)[0]


def test_report_from_a_file_and_save(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(20)) + "\n")
    report = Report(str(path))
    assert len(report) == 1 and str(path) in report.html
    out = report.save(tmp_path / "r.html")
    assert out.read_text() == report.html


def test_report_refuses_other_objects():
    with pytest.raises(AttnRhythmError, match="TraceResult"):
        Report([object()])


def test_iframe_escapes_the_page():
    fragment = iframe('<p title="a">&amp;</p>')
    assert _inner(fragment) == '<p title="a">&amp;</p>'


def test_trace_result_renders_itself(embedded):
    from attnrhythm import AnalysisConfig, analyze_text

    model, tok = embedded
    result = analyze_text(model, tok, "What is 2+3?", "2 plus 3 is 5, so the answer is 5.",
                          AnalysisConfig(save_maps="0:8"))  # fmt: skip
    page = _inner(result._repr_html_())
    (trace,) = _traces(page)
    response_tokens = [tok.decode([i]) for i in result.input_ids[result.response_start :]]
    assert trace["tokens"] == response_tokens  # real tokens, not <id> placeholders
    assert trace["maps"] is not None and trace["n"] == len(response_tokens)
    assert '<div id="trace"' in page
