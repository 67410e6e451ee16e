"""``study perturb --reuse-trials`` and the re-analysis path (``--records``, ``--sinks exclude``).

Tiny random Llama, a handful of short responses: the reuse route must give what a fresh run
gives wherever the positions are the same, without decoding them again; a ``--records`` run
must not sample, must keep every response token for token, and ``--sinks exclude`` must change
only the analysis.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run, save_tiny_llama

import attnrhythm.runner
import attnrhythm.studies.perturb as perturb_module
from attnrhythm.studies.perturb import PerturbConfig, perturb_record, pick_positions
from attnrhythm.studies.run import known_continuations

SAME_RESPONSE = ("key", "input_ids", "response_start", "response", "prompt")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    path = tmp_path_factory.mktemp("tiny-reuse")
    return save_tiny_llama(path, embedded_dir, max_position_embeddings=1024, initializer_range=0.5)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from attnrhythm.analyze import AnalysisConfig, Analyzer
    from attnrhythm.generate import make_trace
    from attnrhythm.models import load_model

    model, tok = load_model(str(tiny_dir))
    response = " ".join(f"step {i} adds {i * 3} apples to the box" for i in range(6))
    record = Analyzer(model, AnalysisConfig()).analyze([make_trace(tok, "How many apples?", response)])[0]
    return model, tok, {**record.to_record(tok), "key": "r1"}


@pytest.fixture
def decodes(monkeypatch) -> list[list[list[int]]]:
    """Every batch of prefixes the perturbation greedy-decodes (the real decoder still runs)."""
    calls: list[list[list[int]]] = []
    real = perturb_module.generate

    def counting(model, tokenizer, batch, **kwargs):
        calls.append([list(p) for p in batch])
        return real(model, tokenizer, batch, **kwargs)

    monkeypatch.setattr(perturb_module, "generate", counting)
    return calls


def _known(tmp_path: Path, trial: dict) -> dict:
    return known_continuations(_write_lines(tmp_path / "trials.jsonl", [trial]))[trial["key"]]


def test_reuse_with_the_same_positions_decodes_nothing_and_equals_the_fresh_trial(tiny, tmp_path, decodes):
    model, tok, record = tiny
    cfg = PerturbConfig(top_k=2, horizon=8, margin=3)
    fresh = perturb_record(model, tok, record, cfg)
    assert len(decodes) == 1
    reused = perturb_record(model, tok, record, cfg, known=_known(tmp_path, fresh))
    assert len(decodes) == 1  # nothing decoded again
    assert reused == fresh


def test_reuse_decodes_only_the_moved_position(tiny, tmp_path, decodes):
    """The low position moves (another FAI curve, same tokens): the high one is taken from the
    earlier trial, only the low one is decoded, and both equal a fresh trial on the new curve."""
    model, tok, record = tiny
    cfg = PerturbConfig(top_k=2, horizon=8, margin=3)
    before = perturb_record(model, tok, record, cfg)
    fai = list(record["metrics"]["fai"])
    high, low = before["high"]["position"], before["low"]["position"]
    eligible = [
        s for s, v in enumerate(fai) if v is not None and 3 <= s < len(fai) - 3 and s not in (high, low)
    ]
    moved_to = eligible[len(eligible) // 2]
    fai[moved_to] = min(v for v in fai if v is not None) - 1.0
    moved = {**record, "metrics": {**record["metrics"], "fai": fai}}
    assert pick_positions(fai, 3) == (high, moved_to)

    decodes.clear()
    reused = perturb_record(model, tok, moved, cfg, known=_known(tmp_path, before))
    r0 = record["response_start"]
    assert len(decodes) == 1 and {len(p) for p in decodes[0]} == {r0 + moved_to + 1}
    assert len(decodes[0]) == cfg.top_k + 1  # the original token and its alternatives, low only
    assert reused["high"] == before["high"]

    fresh = perturb_record(model, tok, moved, cfg)
    assert reused == fresh


def test_reuse_needs_the_same_perturbation_settings(tiny, tmp_path, decodes):
    model, tok, record = tiny
    before = perturb_record(model, tok, record, PerturbConfig(top_k=2, horizon=8, margin=3))
    longer = PerturbConfig(top_k=2, horizon=9, margin=3)
    decodes.clear()
    again = perturb_record(model, tok, record, longer, known=_known(tmp_path, before))
    assert len(decodes) == 1 and len(decodes[0]) == 2 * (longer.top_k + 1)  # both decoded again
    assert again == perturb_record(model, tok, record, longer)


def test_records_route_reuses_responses_and_sinks_exclude_changes_only_the_analysis(
    capsys, tiny_dir, tmp_path, monkeypatch, decodes
):
    # the responses: one sampled study run, sinks kept
    keep = tmp_path / "keep"
    sample = ["--model", tiny_dir, "--n", "4", "--max-new-tokens", "40", "--batch-size", "4"]
    perturbing = ["--top-k", "2", "--horizon", "6", "--bootstrap", "50", "--seed", "3"]
    code, _, err = run(capsys, "study", "perturb", *sample, *perturbing, "--out", keep)
    assert code == 0, err
    kept = _lines(keep / "records.jsonl")
    assert len(kept) == 4 and all(r["sinks"] == {"mode": "keep", "tokens": 1} for r in kept)

    # from here on nothing may be sampled: the records route only re-analyses and perturbs
    def no_sampling(*args, **kwargs):
        raise AssertionError("a --records run sampled responses")

    monkeypatch.setattr(attnrhythm.runner, "generate", no_sampling)
    monkeypatch.setattr("attnrhythm.studies.run.sampled_records", no_sampling)

    # --records with the same sink setting: the records are used as they are
    same = tmp_path / "same"
    decodes.clear()
    code, _, err = run(
        capsys, "study", "perturb", "--model", tiny_dir, "--records", keep / "records.jsonl",
        "--reuse-trials", keep / "trials.jsonl", *perturbing, "--out", same,
    )  # fmt: skip
    assert code == 0, err
    assert not decodes  # every position was perturbed by the keep run already
    assert _lines(same / "trials.jsonl") == _lines(keep / "trials.jsonl")
    assert (
        json.loads((same / "results.json").read_text())["summary"]
        == json.loads((keep / "results.json").read_text())["summary"]
    )

    # --sinks exclude on the same responses, with and without the keep run's trials
    runs = {}
    for name, extra in (("reused", ["--reuse-trials", keep / "trials.jsonl"]), ("fresh", [])):
        decodes.clear()
        out = tmp_path / name
        code, _, err = run(
            capsys, "study", "perturb", "--model", tiny_dir, "--records", keep / "records.jsonl",
            "--sinks", "exclude", *extra, *perturbing, "--out", out,
        )  # fmt: skip
        assert code == 0, err
        runs[name] = (_lines(out / "records.jsonl"), _lines(out / "trials.jsonl"), len(decodes))
        assert json.loads((out / "results.json").read_text())["run"]["sinks"] == "exclude"

    excluded, trials, decoded = runs["reused"]
    # the responses token for token, in the keep run's order; only the analysis differs
    assert [{f: r.get(f) for f in SAME_RESPONSE} for r in excluded] == [
        {f: r.get(f) for f in SAME_RESPONSE} for r in kept
    ]
    assert all(r["sinks"] == {"mode": "exclude", "tokens": 1} for r in excluded)
    assert any(a["metrics"]["fai"] != b["metrics"]["fai"] for a, b in zip(excluded, kept))
    assert runs["fresh"][0] == excluded  # the re-analysis is deterministic

    # the reuse route equals the fresh one, and decodes only the positions the keep run had not
    assert trials == runs["fresh"][1]
    keep_positions = {
        (t["key"], t[w]["position"])
        for t in _lines(keep / "trials.jsonl")
        if "skipped" not in t
        for w in ("high", "low")
    }
    wanted = [(t["key"], t[w]["position"]) for t in trials if "skipped" not in t for w in ("high", "low")]
    new = [p for p in wanted if p not in keep_positions]
    trials_with_new = {key for key, _ in new}
    assert len(new) < len(wanted)  # some positions are reused, else this tests nothing
    assert decoded == len(trials_with_new)  # one batch per trial with a position not decoded before
    assert runs["fresh"][2] == sum("skipped" not in t for t in trials)
    for t in trials:
        for w in ("high", "low"):
            if "skipped" not in t and (t["key"], t[w]["position"]) in keep_positions:
                old = next(k for k in _lines(keep / "trials.jsonl") if k["key"] == t["key"])
                same_entry = next(e for e in (old["high"], old["low"]) if e["position"] == t[w]["position"])
                assert {k: v for k, v in t[w].items() if k != "fai"} == {
                    k: v for k, v in same_entry.items() if k != "fai"
                }
