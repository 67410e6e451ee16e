"""Corpus head sets: `attnrhythm heads`, heads.json, and --heads in analyze, train, studies and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_error_line, run, save_tiny_llama
from test_report import make_record

from attnrhythm.analyze import load_heads_file
from attnrhythm.errors import AttnRhythmError
from attnrhythm.headsets import corpus_heads, read_heads_file, write_heads_file
from attnrhythm.method.rhythm import classify_heads
from attnrhythm.records import iter_jsonl
from attnrhythm.views.report import corpus_payload, render_html

PROMPT = "Tom has 3 boxes of 12 apples and gives away 10. How many are left?"
RESPONSE = "3 boxes times 12 apples is 36 apples. 36 minus 10 is 26. The answer is 26."


def _corpus(count: int = 5, **kw) -> list[dict]:
    return [make_record(30, seed=s, key=f"t{s}", **kw) for s in range(count)]


def test_corpus_classes_come_from_the_mean_span():
    records = _corpus(6)
    data = corpus_heads(records)
    mean = torch.tensor([r["heads"]["distance"] for r in records], dtype=torch.float64).mean(0)
    expected = classify_heads(mean, 0.3)
    layers = records[0]["layers"]
    assert data["local"] == [[layers[a], b] for a, b in expected.local]
    assert data["global"] == [[layers[a], b] for a, b in expected.global_]
    assert torch.allclose(torch.tensor(data["distance"], dtype=torch.float64), mean, rtol=1e-6)
    assert data["traces"] == 6 and data["layers"] == layers and data["heads"] == 4


def test_stability_is_the_share_of_traces_per_head():
    records = _corpus(5)
    data = corpus_heads(records)
    local = torch.zeros(3, 4)
    glob = torch.zeros(3, 4)
    for r in records:
        own = classify_heads(torch.tensor(r["heads"]["distance"], dtype=torch.float64), 0.3)
        for a, b in own.local:
            local[a, b] += 0.2
        for a, b in own.global_:
            glob[a, b] += 0.2
    assert torch.allclose(torch.tensor(data["stability"]["local"]), local, atol=1e-6)
    assert torch.allclose(torch.tensor(data["stability"]["global"]), glob, atol=1e-6)
    # every trace has m local and m global heads: the shares add up to m per class
    assert abs(sum(map(sum, data["stability"]["local"])) - 4) < 1e-5
    assert 0 <= data["keeps_class"]["local"] <= 1 and 0 <= data["keeps_class"]["global"] <= 1
    assert "receiver" in data["stability"] and data["receiver_traces"] == 5


def test_identical_traces_are_perfectly_stable():
    record = make_record(30)
    data = corpus_heads([record, json.loads(json.dumps(record))])
    assert data["keeps_class"] == {"local": 1.0, "global": 1.0}


@pytest.mark.parametrize(
    ("records", "needle"),
    [
        ([], "no records"),
        ([make_record(30), make_record(30, layers=(1, 2, 4))], "same --layers"),
        ([make_record(30), make_record(30, n_heads=5)], "same --layers"),
        ([make_record(30), [1, 2]], "not a JSON object"),
        ([{**make_record(30), "heads": {"distance": "x"}}], "heads.distance"),
        ([make_record(30), {**make_record(30), "head_quantile": 0.2}], "--head-quantile"),
    ],
)
def test_bad_corpora_are_one_line(records, needle):
    with pytest.raises(AttnRhythmError, match=needle.replace("-", "\\-")):
        corpus_heads(records)


def test_heads_file_round_trips_and_is_accepted(tmp_path):
    data = corpus_heads(_corpus(4))
    path = write_heads_file(data, tmp_path / "heads.json")
    assert json.loads(path.read_text()) == data
    assert "[1, 0]" in path.read_text() or "[1, 1]" in path.read_text()  # pairs on one line
    layers, classes = load_heads_file(path)
    assert layers == data["layers"]
    assert [list(h) for h in classes.local] == data["local"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"[1]", "JSON object"),
        (b'{"local": [[1, 0]]}', "'local' and 'global'"),
        (b'{"local": [[1, -1]], "global": [[1, 2]]}', "integers >= 0"),
        (b'{"local": [[1, 1e999]], "global": [[1, 2]]}', "integers >= 0"),
        (b'{"local": [], "global": [[1, 2]]}', "empty local"),
        (b'{"layers": [2], "local": [[1, 0]], "global": [[2, 1]]}', "not in its 'layers'"),
    ],
)
def test_bad_heads_files_are_one_line(tmp_path, content, needle):
    path = tmp_path / "h.json"
    path.write_bytes(content)
    with pytest.raises(AttnRhythmError, match=needle):
        read_heads_file(path)


# ------------------------------------------------------------------ the CLI and --heads


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir, max_position_embeddings=160)


@pytest.fixture(scope="module")
def corpus_file(tiny_dir, tmp_path_factory) -> Path:
    """Records of 3 traces of the tiny model (per-sequence classes, receivers on)."""
    work = tmp_path_factory.mktemp("corpus")
    src = work / "in.jsonl"
    lines = [
        {"id": "a", "prompt": PROMPT, "response": RESPONSE},
        {"id": "b", "prompt": "What is 2 + 2?", "response": "2 plus 2 is 4, so the answer is 4 apples."},
        {"id": "c", "prompt": "Count to five.", "response": "One, two, three, four, five. That is five."},
    ]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = work / "r.jsonl"
    from attnrhythm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--model", str(tiny_dir), "--input", str(src), "--out", str(out), "--layers", "all",
              "--fai-horizon", "2:end"])  # fmt: skip
        raise SystemExit(0)
    assert (exc.value.code or 0) == 0
    return out


def test_heads_command_writes_a_file_analyze_accepts(capsys, tiny_dir, corpus_file, tmp_path):
    heads = tmp_path / "heads.json"
    code, out, err = run(capsys, "heads", corpus_file, "--out", heads)
    assert code == 0, err
    data = json.loads(heads.read_text())
    assert data["format"] == "attnrhythm-heads" and data["traces"] == 3 and data["layers"] == [0, 1, 2]
    assert "local in" in out and "wrote" in err
    rec = tmp_path / "fixed.jsonl"
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--prompt", PROMPT, "--response", RESPONSE,
                       "--out", rec, "--heads", heads)  # fmt: skip
    assert code == 0, err
    (record,) = list(iter_jsonl(rec))
    assert record["layers"] == data["layers"]  # the head set's layers are the analysed layers
    assert record["heads"]["local"] == data["local"] and record["heads"]["global"] == data["global"]


def test_heads_of_another_model_shape_are_one_line(capsys, tiny_dir, tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"local": [[0, 7]], "global": [[1, 1]]}))
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--prompt", PROMPT, "--response", RESPONSE,
                       "--out", tmp_path / "x.jsonl", "--heads", heads)  # fmt: skip
    assert code != 0 and "4 query heads" in one_error_line(err)


def test_train_settings_accept_a_heads_file(tmp_path):
    from attnrhythm.train import RhythmCreditConfig

    path = write_heads_file(corpus_heads(_corpus(3)), tmp_path / "heads.json")
    config = RhythmCreditConfig(heads=str(path))
    analysis = config.analysis_config()
    assert analysis.heads is not None and analysis.heads_layers == [1, 2, 3]
    with pytest.raises(AttnRhythmError, match="does not exist"):
        RhythmCreditConfig(heads=str(tmp_path / "missing.json"))


def test_train_cli_puts_heads_into_the_rhythm_options(capsys, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from attnrhythm.train import runs

    path = write_heads_file(corpus_heads(_corpus(3)), tmp_path / "heads.json")
    seen = {}

    def fake_train(settings, **_):
        seen["settings"] = settings
        raise AttnRhythmError("stop here")

    monkeypatch.setattr(runs, "train", fake_train)
    code, _, err = run(capsys, "train", "--task", "arithmetic", "--heads", path, "--out", tmp_path / "run",
                       "--steps", "1")  # fmt: skip
    assert "stop here" in err
    assert seen["settings"].rhythm_options["heads"] == str(path.resolve())


def test_study_settings_record_a_fixed_head_set(tmp_path):
    from attnrhythm.analyze import AnalysisConfig
    from attnrhythm.studies.run import SampleConfig, _settings

    layers, classes = load_heads_file(write_heads_file(corpus_heads(_corpus(3)), tmp_path / "h.json"))
    plain = _settings("m", SampleConfig(), AnalysisConfig())
    fixed = _settings("m", SampleConfig(), AnalysisConfig(heads=classes, heads_layers=layers))
    assert "heads" not in plain  # settings.json of older runs still match
    assert fixed["heads"]["layers"] == layers


def test_study_refuses_heads_with_reused_records(capsys, tmp_path, corpus_file):
    heads = write_heads_file(corpus_heads(_corpus(3)), tmp_path / "h.json")
    code, _, err = run(capsys, "study", "couplings", "--records", corpus_file, "--heads", heads,
                       "--out", tmp_path / "s")  # fmt: skip
    assert code != 0 and "--heads" in one_error_line(err)


def test_report_shows_stability_from_the_records_or_a_file(tmp_path):
    records = _corpus(3)
    payload = corpus_payload(records)
    assert payload is not None and payload["traces"] == 3 and "computed" in payload["origin"]
    assert corpus_payload(records[:1]) is None  # one trace: nothing to be stable over
    assert corpus_payload([records[0], make_record(30, layers=(4, 5, 6))]) is None
    path = write_heads_file(corpus_heads(_corpus(5)), tmp_path / "h.json")
    from_file = corpus_payload(records, str(path))
    assert from_file["traces"] == 5
    page = render_html(records, heads=str(path))
    assert '"keeps_class"' in page and '"origin":"head set ' in page
    with pytest.raises(AttnRhythmError, match="not a corpus head set"):
        corpus_payload(records, {"local": [[1, 0]], "global": [[1, 1]]})
