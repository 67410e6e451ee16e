"""The mechanism studies: peaks, statistics with known answers, couplings, perturbation, CLI.

Known answers: planted couplings give large lifts with tiny p-values; independent random
curves give lifts whose interval covers 0 under the default (shift) null; hand-computed
values for small cases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line, run, save_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrhythm.errors import AttnRhythmError
from attnrhythm.method.peaks import peaks
from attnrhythm.studies.couplings import COUPLINGS, PeakSpec, TraceSeries, coupling_parts, couplings
from attnrhythm.studies.perturb import (
    STOPWORDS,
    PerturbConfig,
    alternatives,
    content_words,
    jaccard,
    perturb_record,
    pick_positions,
    summarise_trials,
)
from attnrhythm.studies.problems import load_problems, problem_set
from attnrhythm.studies.statistics import (
    RatioParts,
    bootstrap_mean_ci,
    random_subsets,
    sign_test,
    summarise,
    wilson_interval,
)

# -- peaks -------------------------------------------------------------------------------


def test_peaks_local_maxima_among_topq():
    values = [0.0, 3.0, 1.0, 5.0, 5.0, 2.0, None, 4.0, 0.5]
    # 8 defined values, q = 0.5 -> top 4 = {5, 5, 4, 3}; threshold 3
    found, threshold = peaks(values, 0.5)
    assert threshold == 3.0
    # 3.0 (t=1) > 0 and >= 1; t=3 5 > 1 and >= 5; t=4 not > 5; t=7 after an undefined neighbour
    assert found == [1, 3, 7]
    assert peaks(values, 0.5, "top")[0] == [1, 3, 4, 7]
    assert peaks(values, 1.0)[0] == [1, 3, 7]  # every local maximum
    assert peaks([None, None], 0.4) == ([], None)


@pytest.mark.parametrize(("q", "rule"), [(0.0, "local-max"), (1.5, "local-max"), (0.4, "valley")])
def test_bad_peak_spec(q, rule):
    with pytest.raises(AttnRhythmError):
        PeakSpec(q=q, rule=rule)


@given(st.lists(st.one_of(st.none(), st.floats(-5, 5)), max_size=40), st.floats(0.05, 1.0))
@settings(max_examples=60, deadline=None)
def test_local_max_peaks_are_never_adjacent_and_within_top(values, q):
    found, threshold = peaks(values, q)
    assert all(b - a >= 2 for a, b in zip(found, found[1:]))
    assert all(values[t] is not None and values[t] >= threshold for t in found)
    assert set(found) <= set(peaks(values, q, "top")[0])


# -- statistics ----------------------------------------------------------------------------


def test_summarise_ratio_of_sums_by_hand():
    parts = RatioParts(num=[2, 3], den=[4, 6], rnum=[1, 2], rden=[4, 6], perm_num=np.array([[1, 1], [3, 3]]))
    out = summarise(parts, bootstrap=200, seed=0)
    assert out["observed"] == pytest.approx(5 / 10)
    assert out["random"] == pytest.approx(3 / 10)
    assert out["lift"] == pytest.approx((0.5 - 0.3) / 0.3)
    # null statistics 0.2 and 0.6; one of two >= 0.5 -> (1 + 1) / (1 + 2)
    assert out["p_value"] == pytest.approx(2 / 3)
    lo, hi = out["observed_ci"]
    assert lo <= 0.5 <= hi


def test_summarise_skips_empty_problems_and_handles_none():
    parts = RatioParts(num=[0], den=[0], rnum=[0], rden=[0], perm_num=np.zeros((5, 1)))
    out = summarise(parts)
    assert out["problems"] == 0 and out["observed"] is None and out["lift"] is None


def test_wilson_and_sign_test_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) is None
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) is None


def test_bootstrap_mean_ci_and_random_subsets():
    values = np.arange(10.0)
    lo, hi = bootstrap_mean_ci(values, bootstrap=500, seed=1)
    assert lo < 4.5 < hi
    draws = random_subsets(np.random.default_rng(0), 7, 3, 50)
    assert draws.shape == (50, 3)
    assert all(len(set(row)) == 3 and max(row) < 7 for row in draws.tolist())


# -- couplings -----------------------------------------------------------------------------


def random_traces(seed: int, count: int = 40, n: int = 150) -> list[TraceSeries]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        waad = np.convolve(rng.random(n + 4), np.ones(5) / 5, "valid")  # smooth, like real WAAD
        fai = rng.random(n)
        fai[-10:] = np.nan
        recv = rng.random(n)
        recv[-10:] = np.nan
        out.append(TraceSeries(str(i), waad, fai, recv, rng.random(n) * 0.3))
    return out


def planted(traces: list[TraceSeries], lag: int = 1) -> list[TraceSeries]:
    """Entropy high at WAAD peaks; receiver FAI = global FAI; FAI peaks right after WAAD peaks."""
    out = []
    for t in traces:
        wpk, _ = peaks(t.waad.tolist(), 0.4)
        entropy = t.entropy.copy()
        entropy[wpk] += 1.0
        fai = np.full(t.n, 0.01)
        for w in wpk:
            if w + lag < t.n:
                fai[w + lag] = 1.0 + w / t.n
        fai[-10:] = np.nan
        out.append(TraceSeries(t.key, t.waad, fai, fai.copy(), entropy))
    return out


def test_planted_couplings_give_large_lifts():
    res = couplings(planted(random_traces(0)), permutations=500, bootstrap=500)["couplings"]
    for name in COUPLINGS:
        r = res[name]
        assert r["lift"] > 0.5, (name, r)
        assert r["lift_ci"][0] > 0.3, (name, r)
        assert r["p_value"] <= 2 / 501, (name, r)
    assert res["receiver_vs_global_fai_peaks"]["observed"] == 1.0
    assert res["fai_after_waad_peaks"]["observed"] > 0.95  # a flat start can add a peak at 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_curves_give_no_lift_under_shift_null(seed):
    res = couplings(random_traces(seed), permutations=500, bootstrap=1000, seed=seed)["couplings"]
    for name in COUPLINGS:
        r = res[name]
        lo, hi = r["lift_ci"]
        assert lo < 0 < hi, (name, r)
        assert abs(r["lift"]) < 0.08, (name, r)
        assert r["p_value"] > 0.01, (name, r)


def test_uniform_null_overstates_coupling_three_on_random_curves():
    """The documented reason for the shift default: non-adjacent peaks vs clustered uniform draws."""
    traces = random_traces(0)
    shift = couplings(traces, PeakSpec(null="shift"), permutations=200, bootstrap=0)["couplings"]
    uniform = couplings(traces, PeakSpec(null="uniform"), permutations=200, bootstrap=0)["couplings"]
    name = "fai_after_waad_peaks"
    assert uniform[name]["lift"] > shift[name]["lift"] + 0.04


def test_couplings_by_hand_one_trace():
    nan = math.nan
    waad = np.array([0, 5, 0, 0, 6, 0, 0, 0, 0, 0], dtype=float)  # peaks (q=0.2 -> top 2) at 1, 4
    entropy = np.array([1, 3, 1, 1, 5, 1, 1, 1, 1, 1], dtype=float)
    fai = np.array([0, 0, 9, 0, 0, 8, 0, 0, nan, nan])  # peaks at 2, 5 (top 2 of 8)
    recv = np.array([0, 0, 9, 0, 7, 0, 0, 0, nan, nan])  # peaks at 2, 4
    trace = TraceSeries("t", waad, fai, recv, entropy)
    res = couplings([trace], PeakSpec(q=0.2), permutations=0, bootstrap=0)
    c = res["couplings"]
    # 1: entropy at {1, 4} = (3 + 5) / 2 = 4; mean over all = 16 / 10
    assert c["entropy_at_waad_peaks"]["observed"] == pytest.approx(4.0)
    assert c["entropy_at_waad_peaks"]["random"] == pytest.approx(1.6)
    # 2: receiver peaks {2, 4}, global {2, 5}: 1 of 2 coincide; chance 2 * 2 / 8 / 2 = 0.25
    assert c["receiver_vs_global_fai_peaks"]["observed"] == pytest.approx(0.5)
    assert c["receiver_vs_global_fai_peaks"]["random"] == pytest.approx(0.25)
    # 3: FAI peaks 2 (WAAD peak 1 in [1, 2]) and 5 (WAAD peak 4 in [4, 5]) -> 2 of 2
    assert c["fai_after_waad_peaks"]["observed"] == pytest.approx(1.0)
    # shift null: WAAD peaks {1+d, 4+d} mod 10; hits counted over all 10 offsets
    hits = 0
    for d in range(10):
        w = {(1 + d) % 10, (4 + d) % 10}
        hits += sum(any(s - lag in w for lag in (0, 1) if s - lag >= 0) for s in (2, 5))
    assert c["fai_after_waad_peaks"]["random"] == pytest.approx(hits / 10 / 2)


def test_permutation_null_has_the_right_shape_and_mean():
    traces = random_traces(3, count=10)
    parts, details = coupling_parts(traces, PeakSpec(), permutations=300, seed=0)
    for name in COUPLINGS:
        p = parts[name]
        assert p.perm_num.shape == (300, 10)
        # the random baseline is the exact expectation of the null: the Monte Carlo mean agrees
        mc = p.perm_num.mean(0).sum() / p.den.sum()
        exact = p.rnum.sum() / p.rden.sum()
        assert mc == pytest.approx(exact, rel=0.05)
    assert len(details) == 10 and {"waad_peaks", "fai_peaks", "receiver_peaks"} <= set(details[0])


def test_trace_series_rejects_records_without_receivers():
    record = {"key": "x", "metrics": {"waad": [1.0], "fai": [None], "entropy": [0.1]}}
    with pytest.raises(AttnRhythmError, match="receiver"):
        TraceSeries.from_record(record)
    with pytest.raises(AttnRhythmError, match="no metrics"):
        TraceSeries.from_record({"key": "y"})
    with pytest.raises(AttnRhythmError, match="no analysed responses"):
        couplings([])


# -- perturbation --------------------------------------------------------------------------


def test_content_words_and_jaccard():
    assert content_words("The answer is 26, and it is 3 apples.") == {"answer", "26", "3", "apples"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0
    assert {"the", "is", "and"} <= STOPWORDS


def test_pick_positions():
    fai = [9.0, 1.0, 5.0, 0.5, 7.0, 3.0, None, None]
    # margin 1 -> eligible 1..6 with FAI defined: 1, 2, 3, 4, 5; high 4 (7.0), low 3 (0.5)
    assert pick_positions(fai, 1) == (4, 3)
    assert isinstance(pick_positions([1.0, None, None], 0), str)
    assert isinstance(pick_positions([2.0, 2.0, 2.0], 0), str)


def test_alternatives_skip_original_and_special():
    logp = torch.log_softmax(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), -1)
    assert alternatives(logp, original=0, k=2, banned={1}) == [2, 3]
    assert alternatives(logp, original=3, k=3, banned=set()) == [0, 1, 2]


def test_summarise_trials_counts_ties_and_skips():
    def trial(h, low):
        return {"key": "k", "high": {"mean_jaccard": h}, "low": {"mean_jaccard": low}}

    trials = [trial(0.2, 0.5), trial(0.3, 0.6), trial(0.5, 0.5), trial(0.7, 0.4)]
    trials.append({"key": "s", "skipped": "x"})
    s = summarise_trials(trials, bootstrap=100)
    assert s["trials"] == 4 and s["skipped"] == 1
    assert s["high_lower"] == 2 and s["ties"] == 1 and s["high_higher"] == 1
    assert s["pr_high_lower"] == pytest.approx(0.5)
    assert s["jaccard_high"] == pytest.approx(0.425) and s["jaccard_low"] == pytest.approx(0.5)
    assert s["sign_test_p"] == pytest.approx(sign_test(2, 1))


@pytest.mark.parametrize(
    "kwargs", [{"top_k": 0}, {"horizon": 0}, {"margin": -1}, {"reference": "other"}]
)
def test_bad_perturb_config(kwargs):
    with pytest.raises(AttnRhythmError):
        PerturbConfig(**kwargs)


# -- on a tiny random model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    path = tmp_path_factory.mktemp("tiny-study")
    return save_tiny_llama(path, embedded_dir, max_position_embeddings=1024, initializer_range=0.5)


def test_perturb_record_on_tiny_model(tiny_dir):
    from attnrhythm.analyze import AnalysisConfig, Analyzer
    from attnrhythm.generate import generate, make_trace
    from attnrhythm.models import load_model

    model, tok = load_model(str(tiny_dir))
    response = " ".join(f"step {i} adds {i * 3} apples to the box" for i in range(6))
    trace = make_trace(tok, "How many apples?", response)
    record = Analyzer(model, AnalysisConfig()).analyze([trace])[0].to_record(tok)
    record["key"] = "r1"
    cfg = PerturbConfig(top_k=2, horizon=8, margin=3)
    trial = perturb_record(model, tok, record, cfg)
    fai = record["metrics"]["fai"]
    high, low = trial["high"]["position"], trial["low"]["position"]
    assert (high, low) == pick_positions(fai, 3)
    ids, r0 = record["input_ids"], record["response_start"]
    for which in ("high", "low"):
        t = trial[which]
        assert len(t["alternatives"]) == 2 == len(t["jaccard"]) == len(t["continuations"])
        assert all(0.0 <= j <= 1.0 for j in t["jaccard"])
        assert t["original"] == tok.decode([ids[r0 + t["position"]]])
        assert t["original"] not in t["alternatives"] or len(set(t["alternatives"])) == 2
    # the greedy reference equals a greedy decode of prefix + original token on its own
    s = high
    alone = generate(model, tok, [ids[: r0 + s + 1]], max_new_tokens=8, temperature=0.0)[0]
    assert trial["high"]["reference"] == tok.decode(alone, skip_special_tokens=True)


def test_study_cli_couplings_and_perturb(capsys, tiny_dir, tmp_path):
    out = tmp_path / "couplings"
    common = ["--model", tiny_dir, "--n", "3", "--max-new-tokens", "40", "--batch-size", "3"]
    code, stdout, err = run(
        capsys, "study", "couplings", *common, "--out", out, "--permutations", "50", "--bootstrap", "50"
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert set(results["couplings"]) == set(COUPLINGS)
    for name in COUPLINGS:
        keys = {"observed", "random", "lift", "lift_ci", "p_value", "paper"}
        assert keys <= set(results["couplings"][name])
    assert results["run"]["responses"] == 3
    assert (out / "couplings.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "paper lift" in md and "+51.97%" in md
    assert "Rhythm couplings" in stdout
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all("fai_receiver" in r["metrics"] for r in records)

    # a rerun resumes: the same records, nothing resampled
    before = (out / "records.jsonl").read_text()
    code, _, err = run(capsys, "study", "couplings", *common, "--out", out, "--permutations", "20")
    assert code == 0, err
    assert (out / "records.jsonl").read_text() == before

    # other sampling settings into the same directory are refused in one line
    code, _, err = run(capsys, "study", "couplings", *common, "--out", out, "--temperature", "0.3")
    assert code == 2 and "other settings (temperature)" in one_error_line(err)

    # perturb on those records
    pout = tmp_path / "perturb"
    code, stdout, err = run(
        capsys, "study", "perturb", "--model", tiny_dir, "--records", out / "records.jsonl", "--out", pout,
        "--top-k", "2", "--horizon", "6", "--bootstrap", "50",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((pout / "results.json").read_text())
    s = res["summary"]
    assert s["trials"] + s["skipped"] == 3
    assert {"jaccard_high", "jaccard_low", "pr_high_lower", "pr_high_lower_ci", "paper"} <= set(s)
    assert (pout / "perturb.png").exists() and "Pr(high < low)" in (pout / "results.md").read_text()
    trials = (pout / "trials.jsonl").read_text()
    code, _, err = run(
        capsys, "study", "perturb", "--model", tiny_dir, "--records", out / "records.jsonl", "--out", pout,
        "--top-k", "2", "--horizon", "6",
    )  # fmt: skip
    assert code == 0 and (pout / "trials.jsonl").read_text() == trials  # resumed, nothing redone


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["couplings", "--n", "0"], "bad --n 0"),
        (["couplings", "--peak-q", "0"], "bad peak q"),
        (["couplings", "--peak-rule", "valley"], "unknown peak rule"),
        (["couplings", "--null", "gauss"], "unknown --null"),
        (["couplings", "--lag", "-1"], "bad --lag"),
        (["couplings", "--problems", "nowhere"], "unknown problem source"),
        (["couplings", "--problems", "missing.jsonl"], "does not exist"),
        (["couplings", "--problems", "rg:gsm_symbolc"], "did you mean gsm_symbolic"),
        (["couplings", "--problems", "rg:gsm_symbolic:difficulty=hard"], "must be a number"),
        (["couplings", "--receivers", "0"], "need receiver heads"),
        (["perturb", "--top-k", "0"], "bad --top-k"),
        (["perturb", "--reference", "x"], "unknown --reference"),
    ],
)
def test_study_bad_input_is_one_line(capsys, tiny_dir, tmp_path, args, needle):
    code, _, err = run(capsys, "study", *args[:1], "--model", tiny_dir, "--out", tmp_path / "o", *args[1:])
    assert code == 2
    assert needle in one_error_line(err)


def test_study_bad_records_are_one_line(capsys, tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run(capsys, "study", "couplings", "--records", empty, "--out", tmp_path / "o")
    assert code == 2 and "has no records" in one_error_line(err)
    old = tmp_path / "old.jsonl"
    metrics = {"waad": [1.0], "fai": [None], "entropy": [0.1]}
    record = {"key": "a", "input_ids": [1, 2], "response_start": 1, "metrics": metrics}
    old.write_text(json.dumps(record) + "\n")
    missing = empty.with_name("x.jsonl")
    code, _, err = run(capsys, "study", "couplings", "--records", missing, "--out", tmp_path)
    assert code == 2 and "does not exist" in one_error_line(err)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"key": "a"}) + "\n")
    code, _, err = run(capsys, "study", "couplings", "--records", bare, "--out", tmp_path / "o3")
    assert code == 2 and "has no input_ids" in one_error_line(err)
    code, _, err = run(capsys, "study", "couplings", "--records", old, "--out", tmp_path / "o2")
    assert code == 2 and "receiver" in one_error_line(err)


def test_problem_sources(tmp_path):
    built = load_problems("builtin", 5, seed=3)
    assert len(built) == 5 and all({"id", "prompt", "answer"} <= set(p) for p in built)
    assert built == load_problems("builtin", 5, seed=3)
    path = tmp_path / "qs.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"What is {i}+1?", "answer": i + 1}) for i in range(4)))
    mine = load_problems(str(path), 2, seed=0)
    assert len(mine) == 2 and "\\boxed" in mine[0]["prompt"]
    with pytest.raises(AttnRhythmError, match="bad --problems"):
        load_problems("hf:", 2)


def test_reasoning_gym_problems_are_scored_by_the_dataset():
    problems = problem_set("rg:gsm_symbolic", 4, seed=0)
    assert problems.problems == load_problems("rg:gsm_symbolic", 4, seed=0)
    assert [set(p) for p in problems.problems] == [{"id", "prompt", "answer"}] * 4
    for i, p in enumerate(problems.problems):
        assert "<answer>" in p["prompt"]
        assert problems.correct(i, f"so <answer>{p['answer']}</answer>")
        assert not problems.correct(i, f"so <answer>{int(p['answer']) + 1}</answer>")
        assert not problems.correct(i, f"so the answer is {p['answer']}")  # the dataset wants tags
    boxed = problem_set("rg:gsm_symbolic:answer_format=boxed", 1, seed=0)
    assert boxed.correct(0, f"\\boxed{{{boxed.problems[0]['answer']}}}")
    builtin = problem_set("builtin", 2, seed=0)  # unchanged: the reference number, boxed or not
    assert builtin.task is None and builtin.correct(0, f"The answer is {builtin.problems[0]['answer']}.")


def test_study_cli_on_reasoning_gym_problems(capsys, tiny_dir, tmp_path):
    out = tmp_path / "rg"
    code, _, err = run(
        capsys, "study", "couplings", "--model", tiny_dir, "--problems", "rg:gsm_symbolic", "--n", "2",
        "--max-new-tokens", "30", "--batch-size", "2", "--permutations", "20", "--bootstrap", "20",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["rg-gsm_symbolic-0-00000", "rg-gsm_symbolic-0-00001"]
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["problems"] == "rg:gsm_symbolic" and results["run"]["accuracy"] == 0.0
