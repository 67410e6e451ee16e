"""HTML report and static figure: content, map handling, peaks, and bad input as one clear line."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_error_line, run

from attnrhythm.errors import AttnRhythmError
from attnrhythm.views.report import (
    _encode_map,
    _num,
    check_record,
    index_payload,
    load_records,
    parse_span,
    peaks,
    render_html,
    trace_maps,
    write_report,
)

WORDS = ["First", ",", " we", " add", " 3", " and", " 4", ".", "\n", " So", " <b>&", "</script>", " the",
         " answer"]


def _topq(values: list[float | None], q: float = 0.4) -> list[int]:
    defined = [i for i, v in enumerate(values) if v is not None]
    take = math.ceil(q * len(defined))
    return sorted(sorted(defined, key=lambda i: (-values[i], i))[:take])


def make_record(
    n: int = 60,
    *,
    seed: int = 0,
    key: str = "t0",
    maps_span: tuple[int, int] | None = (0, 32),
    receiver: bool = True,
    prompt_len: int = 5,
    layers: tuple[int, ...] = (1, 2, 3),
    n_heads: int = 4,
    **extra,
) -> dict:
    """A schema-1 record built by hand: plausible curves, roles, heads and (optionally) maps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    waad = (4 + 3 * np.abs(np.sin(t / 3)) + rng.normal(0, 0.3, n)).tolist()
    delta = [abs(waad[i] - waad[i + 1]) for i in range(n - 1)] + [None]
    lo = min(10, n - 1)
    fai = rng.gamma(2.0, 0.002, n).tolist()
    fai = fai[: n - lo] + [None] * lo
    entropy = rng.exponential(0.8, n).tolist()
    preplan, anchor = _topq(delta), _topq(fai)
    dominated = [a for a in anchor if a >= 2 and waad[a] < float(np.median(waad))][:5]
    intro_of = {str(a): a - 1 for a in dominated}
    intro = sorted(set(intro_of.values()))
    gamma = {
        "none": [1.0] * n,
        "local": [1.5 if i in preplan else 1.0 for i in range(n)],
        "global": [1.5 if i in anchor else 1.0 for i in range(n)],
        "coupled": [1.25 if i in dominated else 1.5 if i in anchor else 1.0 for i in range(n)],
    }
    distance = (rng.uniform(1, 30, (len(layers), n_heads))).tolist()
    flat = sorted((d, layer, h) for li, layer in enumerate(layers) for h, d in enumerate(distance[li]))
    m = max(1, round(0.3 * len(flat)))
    prompt_tokens = ["<|im_start|>", "user", "\n", "What", "?"][:prompt_len]
    tokens = prompt_tokens + [WORDS[i % len(WORDS)] for i in range(n)]
    record = {
        "key": key,
        "schema_version": 1,
        "prompt": "What is 3 + 4? <script>alert(1)</script>",
        "response": "".join(tokens[prompt_len:]),
        "generated": False,
        "input_ids": list(range(prompt_len + n)),
        "tokens": tokens,
        "response_start": prompt_len,
        "layers": list(layers),
        "window": 10,
        "fai_horizon": [10, 50],
        "head_quantile": 0.3,
        "heads": {
            "distance": distance,
            "local": [[layer, h] for _, layer, h in flat[:m]],
            "global": [[layer, h] for _, layer, h in flat[-m:]],
        },
        "metrics": {
            "waad": waad,
            "fai": fai,
            "entropy": entropy,
            "logprob": (-np.asarray(entropy)).tolist(),
            "delta": delta,
        },
        "roles": {
            "preplan": preplan,
            "anchor": anchor,
            "dominated": dominated,
            "intro": intro,
            "intro_of": intro_of,
            "tau_waad": float(np.median(waad)),
            "tau_delta": 0.5,
        },
        "credit": {"q": 0.4, "amp": 1.5, "alpha": 0.5, "k": 3, "tau_waad": None, "tau_delta": None,
                   "selection": "top", "seed": 0},
        "gamma": gamma,
        **extra,
    }
    if receiver:
        record["heads"]["receiver"] = [[layers[0], 1], [layers[-1], 2]]
        record["metrics"]["fai_receiver"] = [None if v is None else v * 1.3 for v in fai]
    if maps_span is not None:
        record["maps"] = make_maps(maps_span[0], min(maps_span[1], n))
    return record


def make_maps(start: int, end: int) -> dict:
    """Causal row-stochastic maps: a local band (sawtooth) and global columns (stripes)."""
    size = end - start
    local = np.zeros((size, size))
    glob = np.zeros((size, size))
    for r in range(size):
        for k in range(r + 1):
            local[r, k] = 0.6 ** (r - k)
            glob[r, k] = 1.0 + (8.0 if (start + k) % 7 == 0 else 0.0)
        local[r] /= local[r].sum()
        glob[r] /= glob[r].sum()
    return {"span": [start, end], "local": local.round(6).tolist(), "global": glob.round(6).tolist()}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def data_blocks(page: str) -> dict[str, dict]:
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page, flags=re.S)
    return {name: json.loads(body) for name, body in blocks}


# ------------------------------------------------------------------ the page


def test_report_is_one_self_contained_file(tmp_path):
    records = [
        make_record(60, key="a", answer=7, reward=1.0),
        make_record(45, seed=1, key="b", maps_span=None, receiver=False, reward=0.0),
    ]
    out = write_report(records, tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html" and out.exists()
    page = out.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count("<script") == 2 + len(records)  # index data, one block per trace, the code
    assert page.count("</script>") == 2 + len(records)  # the "</script>" token and prompt are escaped
    # JSON cannot close its script element (a token is literally "</script>")
    blocks = data_blocks(page)
    assert set(blocks) == {"ar-index", "ar-t0", "ar-t1"}
    t0, t1 = blocks["ar-t0"], blocks["ar-t1"]
    assert t0["n"] == 60 and len(t0["tokens"]) == 60 and "</script>" in t0["tokens"]
    assert [s["key"] for s in t0["series"]] == ["waad", "delta", "fai", "fai_receiver", "entropy"]
    assert [s["key"] for s in t1["series"]] == ["waad", "delta", "fai", "entropy"]
    assert t0["maps"]["span"] == [0, 32] and t0["maps_note"] is None
    assert t1["maps"] is None and "--save-maps" in t1["maps_note"] and "--model" in t1["maps_note"]
    assert set(t0["gamma"]) == {"none", "local", "global", "coupled"}
    assert t0["heads"]["receiver"] == [[1, 1], [3, 2]]
    index = blocks["ar-index"]
    assert [r["key"] for r in index["rows"]] == ["a", "b"]
    assert index["rows"][0]["reward"] == 1.0 and index["rows"][0]["answer"] == 7
    assert {c["key"] for c in index["columns"]} >= {"n", "reward", "answer", "preplan", "anchor", "dominated"}
    assert any(h["label"].startswith("WAAD") for h in index["hists"])
    assert any("anchor share" in h["label"] for h in index["hists"])
    frac = index["rows"][0]["frac"]
    assert frac["anchor"] == pytest.approx(len(records[0]["roles"]["anchor"]) / 60, abs=1e-3)


def test_numbers_are_rounded_to_4_significant_digits():
    assert _num(0.123456789) == 0.1235
    assert _num(123456.7) == 123500
    assert _num(1.0) == 1 and isinstance(_num(1.0), int)
    assert _num(None) is None and _num(float("nan")) is None and _num(float("inf")) is None
    page = render_html([make_record(30, maps_span=None)])
    values = data_blocks(page)["ar-t0"]["series"][0]["v"]
    assert all(len(repr(v).replace("-", "").replace(".", "").lstrip("0")) <= 4 for v in values)


def test_peaks_are_local_maxima_in_the_top_q():
    values = [1, 5, 2, 7, 7, 1, None, 9, 3, 4]
    found, threshold = peaks(values, 0.4)
    # defined: 9 values, top ceil(3.6) = 4 -> threshold 5; local maxima >= 5: 1 (5), 3 (first of plateau), 7
    assert threshold == 5
    assert found == [1, 3, 7]
    assert peaks([None, None], 0.4) == ([], None)
    assert peaks([3, 2, 1], 0.4)[0] == [0]


def test_map_encoding_round_trips():
    maps = make_maps(0, 20)
    local = np.asarray(maps["local"])
    data, vmax = _encode_map(local)
    q = np.frombuffer(base64.b64decode(data), dtype="<u2").astype(float)
    assert q.size == 20 * 21 // 2
    decoded = np.zeros_like(local)
    decoded[np.tril_indices(20)] = (q / 65535) ** 2 * vmax
    assert np.allclose(decoded, local, atol=2e-4 * vmax)


def test_maps_come_from_the_record_cut_or_note():
    record = make_record(80, maps_span=(10, 60))
    shown, note = trace_maps(record, None)
    assert note is None and shown["span"] == (10, 60) and shown["local"].shape == (50, 50)
    shown, note = trace_maps(record, (20, 30))
    assert note is None and shown["span"] == (20, 30)
    assert np.allclose(shown["global"], np.asarray(record["maps"]["global"])[10:20, 10:20])
    shown, note = trace_maps(record, (0, 30))  # not inside the saved window, no model
    assert shown is None and "0:30" in note and "--save-maps" in note
    shown, note = trace_maps(record, (70, 200))  # clipped to the response, still not saved
    assert shown is None and "70:80" in note
    shown, note = trace_maps(record, (79, 100))
    assert shown is None and "outside" in note


def test_span_outside_some_traces_is_a_note_not_an_error():
    records = [make_record(40, key="short", maps_span=None), make_record(120, key="long", maps_span=(0, 120))]
    blocks = data_blocks(render_html(records, span="100:110"))
    assert "outside" in blocks["ar-t0"]["maps_note"]
    assert blocks["ar-t1"]["maps"]["span"] == [100, 110]


def test_default_span_is_first_128_tokens(tmp_path):
    record = make_record(200, maps_span=None)
    shown, note = trace_maps(record, None)
    assert shown is None and "0:128" in note


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("a:b", "START:END"), ("5", "START:END"), ("9:3", "0 <= START < END"), ("0:513", "at most 512")],
)
def test_bad_span_spec(spec, needle):
    with pytest.raises(AttnRhythmError, match=needle):
        parse_span(spec)


def test_trace_figure_returns_a_figure(tmp_path):
    from matplotlib.figure import Figure

    from attnrhythm.views.figure import trace_figure

    fig = trace_figure(make_record(70))
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("local heads" in t for t in titles) and any("global heads" in t for t in titles)
    assert any("head span" in t for t in titles)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "FAI (receiver)" in labels and "WAAD (local)" in labels
    fig2 = trace_figure(make_record(70, maps_span=None, receiver=False), curves="10:40")
    texts = [t.get_text() for ax in fig2.axes for t in ax.texts]
    assert any("--save-maps" in t for t in texts)
    assert "FAI (receiver)" not in [ax.get_ylabel() for ax in fig2.axes]


# ------------------------------------------------------------------ the CLI


def test_cli_report_and_figure(capsys, tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [make_record(50, key="a"), make_record(30, seed=2, key="b")])
    out = tmp_path / "report.html"
    code, _, err = run(capsys, "report", src, "--out", out, "--span", "0:16")
    assert code == 0, err
    assert "wrote" in err and out.exists()
    blocks = data_blocks(out.read_text())
    assert blocks["ar-t0"]["maps"]["span"] == [0, 16]
    for suffix in ("png", "svg", "pdf"):
        fig = tmp_path / f"fig.{suffix}"
        code, _, err = run(capsys, "figure", src, "--index", "1", "--out", fig, "--dpi", "60")
        assert code == 0, err
        assert fig.stat().st_size > 1000
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"


def _bad(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["report", "figure"])
@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        ("", [], "has no records"),
        ("\n\n", [], "has no records"),
        ('{"key": "a", "schema_version": 1\n', [], "line 1 is not valid JSON"),
        ("[1, 2]\n", [], "is not a JSON object"),
        (json.dumps({k: v for k, v in make_record(20).items() if k != "schema_version"}), [],
         "no schema_version"),
        (json.dumps({**make_record(20), "schema_version": 2}), [], "schema_version 2"),
        (json.dumps({**make_record(20), "metrics": {"waad": [1.0]}}), [], "metrics.waad"),
        (json.dumps({**make_record(20), "maps": {"span": [0, 4], "local": [[1]], "global": [[1]]}}), [],
         "maps"),
        (json.dumps(make_record(20)), ["--span", "30:40"], "outside the response (20 tokens)"),
        (json.dumps(make_record(20)), ["--span", "0:600"], "at most 512"),
        (json.dumps(make_record(20)), ["--span", "zero:ten"], "START:END"),
    ],
)
def test_bad_records_are_one_line(capsys, tmp_path, command, content, extra, needle):
    src = _bad(tmp_path, "in.jsonl", content + ("\n" if content and not content.endswith("\n") else ""))
    out = tmp_path / ("o.html" if command == "report" else "o.png")
    code, _, err = run(capsys, command, src, "--out", out, *extra)
    assert code != 0
    assert needle in one_error_line(err)
    assert not out.exists()


def test_missing_file_and_bad_figure_args(capsys, tmp_path):
    code, _, err = run(capsys, "report", tmp_path / "nope.jsonl", "--out", tmp_path / "o.html")
    assert code != 0 and "does not exist" in one_error_line(err)
    src = write_jsonl(tmp_path / "r.jsonl", [make_record(20), make_record(20, key="t1")])
    for index in ("2", "-1"):
        code, _, err = run(capsys, "figure", src, "--index", index, "--out", tmp_path / "f.png")
        assert code != 0 and "--index" in one_error_line(err) and "indices 0..1" in err
    code, _, err = run(capsys, "figure", src, "--out", tmp_path / "f.jpg")
    assert code != 0 and ".png, .pdf or .svg" in one_error_line(err)
    code, _, err = run(capsys, "figure", src, "--out", tmp_path / "f.png", "--curves", "50:60")
    assert code != 0 and "--curves" in one_error_line(err)
    code, _, err = run(capsys, "report", src, "--out", tmp_path)
    assert code != 0 and "directory" in one_error_line(err)
    code, _, err = run(capsys, "report")
    assert code != 0 and "records" in one_error_line(err).lower()


def test_check_record_accepts_analyze_output_shape():
    record = make_record(25)
    check_record(record)
    del record["tokens"]  # tokens are optional (written only with a tokenizer)
    check_record(record)
    page = render_html([record])
    assert data_blocks(page)["ar-t0"]["tokens"][0] == "<5>"


def test_load_records_round_trip(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [make_record(20), make_record(21, key="x")])
    assert [r["key"] for r in load_records(src)] == ["t0", "x"]


# ------------------------------------------------------------------ maps recomputed with a model


def test_report_recomputes_maps_with_a_model(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (40,)).tolist()
    analyzer = Analyzer(model, AnalysisConfig(layers="all", fai_horizon="2:end"))
    result = analyzer.analyze([TraceInput(ids, 8)])[0]
    record = {"key": "tiny", **result.to_record(None)}
    assert "maps" not in record or record["maps"] is None
    blocks = data_blocks(render_html([record], model=model, span="4:20"))
    maps = blocks["ar-t0"]["maps"]
    assert maps["span"] == [4, 20] and maps["source"] == "recomputed with the model"
    q = np.frombuffer(base64.b64decode(maps["local"]), dtype="<u2")
    assert q.size == 16 * 17 // 2 and q.max() == 65535


def test_index_says_whether_each_answer_was_correct():
    from attnrhythm.views.report import record_correct

    right = make_record(30, key="right", answer=26, response="3 x 12 = 36, 36 - 10 = 26. The answer is 26.")
    wrong = make_record(30, seed=1, key="wrong", answer=26, response="He has 36 apples left.")
    flagged = make_record(30, seed=2, key="flagged", correct=False, answer=7, response="7")
    plain = make_record(30, seed=3, key="plain")
    assert [record_correct(r) for r in (right, wrong, flagged, plain)] == [True, False, False, None]
    payload = index_payload([right, wrong, flagged, plain], "x.jsonl")
    columns = {c["key"]: c["label"] for c in payload["columns"]}
    assert columns["correct"] == "correct" and columns["answer"] == "reference"
    assert [row.get("correct") for row in payload["rows"]] == ["yes", "no", "no", None]
