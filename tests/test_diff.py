"""Rhythm diff: the comparison on identical and hand-made records, and two checkpoints of a short
CPU training run (before / after) compared through the Python API and ``attnrhythm diff``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_error_line, run, save_tiny_llama
from tiny_llama import tiny_llama

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput
from attnrhythm.diff import compare_records, diff_models, diff_records
from attnrhythm.errors import AttnRhythmError
from attnrhythm.views.diff import render_diff

CONFIG = AnalysisConfig(layers="all", window=4, fai_horizon=(2, 8))


def _records(model, seqs) -> list[dict]:
    results = Analyzer(model, CONFIG).analyze([TraceInput(ids, 5) for ids in seqs])
    return [{"key": f"t{i}", **r.to_record()} for i, r in enumerate(results)]


@pytest.fixture(scope="module")
def seqs() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in (30, 41)]


@pytest.fixture(scope="module")
def recs(seqs) -> list[dict]:
    return _records(tiny_llama(0), seqs)


def test_identity_agrees_everywhere(recs):
    diff = diff_records(recs, copy.deepcopy(recs))
    for trace in diff.traces:
        assert all(v == 1.0 for v in trace["jaccard"].values())
        assert trace["spearman"]["fai"]["rho"] == 1.0 and trace["spearman"]["waad"]["rho"] == 1.0
        assert trace["heads"]["changed"] == []
        table = trace["heads"]["transitions"]
        assert sum(table[c][c] for c in table) == trace["heads"]["count"] == 3 * 4
        assert all(g["mean_change"] == 0.0 and g["mean_abs_change"] == 0.0 for g in trace["gamma"].values())
    overall = diff.overall
    assert overall["heads"]["changed"] == 0 and overall["heads"]["count"] == 24
    assert overall["spearman"]["fai"]["mean"] == 1.0 and overall["spearman"]["fai"]["traces"] == 2
    assert all(v["mean"] == 1.0 and v["pooled"] == 1.0 for v in overall["jaccard"].values())
    assert diff.summary["settings"] == {}


def test_spearman_counts_positions_defined_on_both_sides(recs):
    record = recs[0]
    defined = sum(v is not None for v in record["metrics"]["fai"])
    trace = compare_records(record, record)
    assert trace["spearman"]["fai"]["n"] == defined < trace["n"]
    assert trace["spearman"]["waad"]["n"] == trace["n"]


def test_hand_made_changes(recs):
    a = copy.deepcopy(recs[0])
    b = copy.deepcopy(a)
    n = len(a["metrics"]["waad"])
    a["roles"]["anchor"], b["roles"]["anchor"] = [1, 2, 3, 4], [3, 4, 5]  # |&| 2, |U| 5
    a["roles"]["intro"], b["roles"]["intro"] = [], []  # both empty: they agree
    a["roles"]["preplan"], b["roles"]["preplan"] = [0], [1]
    b["metrics"]["waad"] = [-v for v in a["metrics"]["waad"]]  # reversed ranks
    b["metrics"]["fai"] = [None if v is None else 5.0 for v in a["metrics"]["fai"]]  # constant: no rho
    # one local head becomes global, one global head becomes neither
    loc, glob = a["heads"]["local"][0], a["heads"]["global"][0]
    b["heads"]["local"] = [h for h in a["heads"]["local"] if h != loc]
    b["heads"]["global"] = [h for h in a["heads"]["global"] if h != glob] + [loc]
    b["gamma"]["coupled"] = [v + 0.5 if t % 2 == 0 else v for t, v in enumerate(a["gamma"]["coupled"])]
    trace = compare_records(a, b)
    assert trace["jaccard"]["anchor"] == pytest.approx(2 / 5, rel=1e-7)
    assert trace["jaccard"]["intro"] == 1.0 and trace["jaccard"]["preplan"] == 0.0
    assert trace["roles"]["anchor"] == {"a": 4, "b": 3, "both": 2, "either": 5}
    assert trace["spearman"]["waad"]["rho"] == -1.0
    assert trace["spearman"]["fai"]["rho"] is None
    changed = sorted(tuple(c) for c in trace["heads"]["changed"])
    assert changed == sorted([(loc[0], loc[1], "local", "global"), (glob[0], glob[1], "global", "neither")])
    table = trace["heads"]["transitions"]
    assert table["local"]["global"] == 1 and table["global"]["neither"] == 1
    assert table["local"]["local"] == len(a["heads"]["local"]) - 1
    assert trace["gamma"]["coupled"]["mean_change"] == pytest.approx(0.5 * ((n + 1) // 2) / n, rel=1e-6)
    assert trace["gamma"]["none"]["mean_change"] == 0.0


def test_overall_pools_and_averages(recs):
    a = copy.deepcopy(recs)
    b = copy.deepcopy(recs)
    a[0]["roles"]["anchor"], b[0]["roles"]["anchor"] = [0, 1], [1, 2]  # 1/3
    a[1]["roles"]["anchor"], b[1]["roles"]["anchor"] = [0, 1, 2, 3], [0, 1, 2, 3]  # 1
    overall = diff_records(a, b).overall
    assert overall["jaccard"]["anchor"]["mean"] == pytest.approx((1 / 3 + 1) / 2, rel=1e-7)
    assert overall["jaccard"]["anchor"]["pooled"] == pytest.approx((1 + 4) / (3 + 4), rel=1e-7)
    assert overall["tokens"] == sum(len(r["metrics"]["waad"]) for r in recs)


def test_refuses_different_sequences_and_bad_records(recs):
    b = copy.deepcopy(recs)
    b[1]["input_ids"][7] += 1
    with pytest.raises(AttnRhythmError, match="different token sequences .*at token 7"):
        diff_records(recs, b)
    b = copy.deepcopy(recs)
    b[0]["response_start"] = 6
    with pytest.raises(AttnRhythmError, match="response_start"):
        diff_records(recs, b)
    with pytest.raises(AttnRhythmError, match="lacks 1 trace"):
        diff_records(recs, recs[:1])
    bad = copy.deepcopy(recs)
    del bad[0]["metrics"]["fai"]
    with pytest.raises(AttnRhythmError, match="metrics.fai"):
        diff_records(recs, bad)


def _train_steps(model, seqs, steps: int = 2, lr: float = 0.05):
    """A short CPU training run: ``steps`` AdamW steps of next-token loss on ``seqs``."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor([s[:30] for s in seqs])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_checkpoints_before_after_training(seqs, tmp_path):
    before = tiny_llama(0)
    before.save_pretrained(tmp_path / "before")
    after = _train_steps(tiny_llama(0), seqs)
    after.save_pretrained(tmp_path / "after")
    from transformers import LlamaForCausalLM

    a = LlamaForCausalLM.from_pretrained(tmp_path / "before").eval()
    b = LlamaForCausalLM.from_pretrained(tmp_path / "after").eval()
    traces = [{"key": f"t{i}", "input_ids": s, "response_start": 5} for i, s in enumerate(seqs)]
    diff = diff_models((a, None), (b, None), traces, CONFIG, keep=tmp_path / "keep")
    # the same traces as analysing each side directly
    assert diff.records_a == json.loads(json.dumps(_records(a, seqs)))
    assert diff.records_b == json.loads(json.dumps(_records(b, seqs)))
    again = diff_records(diff.records_a, diff.records_b)
    assert again.summary["traces"] == diff.summary["traces"]
    # training moved the rhythm: some measure is no longer the identity
    waad = [t["spearman"]["waad"]["rho"] for t in diff.traces]
    assert all(rho is not None and -1.0 <= rho <= 1.0 for rho in waad)
    assert any(rho < 1.0 for rho in waad)
    assert any(g["mean_abs_change"] > 0 for t in diff.traces for g in t["gamma"].values()) or any(
        v < 1.0 for t in diff.traces for v in t["jaccard"].values()
    )
    # resumed: the kept records are read back, not recomputed
    assert (tmp_path / "keep" / "a.jsonl").is_file()
    resumed = diff_models((a, None), (b, None), traces, CONFIG, keep=tmp_path / "keep")
    assert resumed.summary == diff.summary
    page = render_diff(diff)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert page.count('class="card" id="trace-') == len(seqs)
    out = diff.save(tmp_path / "d.json")
    assert json.loads(out.read_text())["diff_version"] == 1


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, embedded_dir) -> tuple[Path, Path]:
    """Two checkpoints of a tiny Llama with the embedded tokenizer: before and after 2 AdamW steps."""
    root = tmp_path_factory.mktemp("diff-ckpt")
    before = save_tiny_llama(root / "before", embedded_dir, max_position_embeddings=256)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(before)
    g = torch.Generator().manual_seed(0)
    _train_steps(model, torch.randint(0, 1000, (2, 30), generator=g).tolist())
    model.save_pretrained(root / "after")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (before / name).is_file():
            (root / "after" / name).write_bytes((before / name).read_bytes())
    return before, root / "after"


LINES = [
    {"id": "p1", "prompt": "What is 3 + 4?", "response": "3 plus 4 is 7, so the answer is 7."},
    {"id": "p2", "prompt": "Tom has 5 apples and eats 2.", "response": "5 minus 2 leaves 3. Answer: 3."},
]


def test_cli_diff_two_checkpoints(capsys, ckpts, tmp_path):
    before, after = ckpts
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(x) + "\n" for x in LINES), encoding="utf-8")
    args = ("--traces", traces, "--layers", "all", "--fai-horizon", "2:8", "--window", "4")
    out, page, keep = tmp_path / "d.json", tmp_path / "d.html", tmp_path / "keep"
    args += ("--out", out, "--report", page, "--keep", keep)
    code, stdout, err = run(capsys, "diff", before, after, *args)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert [t["key"] for t in summary["traces"]] == ["p1", "p2"]
    assert "Jaccard anchor" in stdout and "head classes" in stdout
    assert page.read_text().count('id="trace-') == 2
    # the kept records diff the same way as records files
    out2 = tmp_path / "d2.json"
    code, _, err = run(capsys, "diff", keep / "a.jsonl", keep / "b.jsonl", "--out", out2)
    assert code == 0, err
    assert json.loads(out2.read_text())["traces"] == summary["traces"]
    # errors: one line each
    bad = tmp_path / "b.jsonl"
    rows = [json.loads(x) for x in (keep / "b.jsonl").read_text().splitlines()]
    rows[0]["input_ids"][3] += 1
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _, err = run(capsys, "diff", keep / "a.jsonl", bad)
    assert code != 0 and "different token sequences" in one_error_line(err)
    code, _, err = run(capsys, "diff", keep / "a.jsonl", tmp_path / "missing.jsonl")
    assert code != 0 and "does not exist" in one_error_line(err)
    code, _, err = run(capsys, "diff", before, after)
    assert code != 0 and "--traces" in one_error_line(err)
    code, _, err = run(capsys, "diff", before, keep / "a.jsonl")
    assert code != 0 and "not one of each" in one_error_line(err)
    garbage = tmp_path / "g.jsonl"
    garbage.write_text('{"schema_version": 1, "key": "p1"}\n{"schema_version": 1, "key": "p2"}\n', "utf-8")
    code, _, err = run(capsys, "diff", keep / "a.jsonl", garbage)
    assert code != 0 and "lacks a valid" in one_error_line(err)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    code, _, err = run(capsys, "diff", before, after, "--traces", prompts)
    assert code != 0 and '"response"' in one_error_line(err)
