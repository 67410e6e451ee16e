"""``attnrhythm train`` / ``attnrhythm eval`` on a tiny random Llama: run files, resume, YAML, errors.

The tiny model (2 layers, hidden 32) carries the embedded model's tokenizer (chat template
included), so prompts go through the chat path as with the real model; its completions are noise,
which is all a 2-step run needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from cli_helpers import one_error_line, run, save_tiny_llama  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.tasks import get_task  # noqa: E402
from attnrhythm.train.evaluate import evaluate, heldout_examples  # noqa: E402
from attnrhythm.train.runs import TrainSettings, build_dataset, read_metrics, training_prompts  # noqa: E402

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

METRIC_KEYS = (
    "step",
    "reward_mean",
    "reward_std",
    "accuracy",
    "loss",
    "learning_rate",
    "seconds_per_step",
    "rhythm_seconds",
    "rhythm/gamma_mean",
    "rhythm/amplified_share",
    "rhythm/seconds",
)

TINY_YAML = """\
task: countdown
task_options:
  n_numbers: [2, 2]
  max_number: 10
  target_range: [1, 20]
steps: 2
num_generations: 2
per_device_train_batch_size: 4
max_completion_length: 10
n_train: 16
learning_rate: 1.0e-4
rhythm_options:
  fai_horizon: [2, 8]
  window: 4
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random Llama with the embedded tokenizer saved beside it."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama"), embedded_dir,
        num_hidden_layers=2, max_position_embeddings=512, initializer_range=0.5, tie_word_embeddings=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML, encoding="utf-8")
    return path


@pytest.mark.parametrize("strategy", ["none", "coupled"])
def test_train_writes_metrics_curve_and_final(capsys, tiny_dir, tiny_yaml, tmp_path, strategy):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "train", "--config", tiny_yaml, "--model", tiny_dir, "--strategy", strategy, "--out", out
    )
    assert code == 0, err
    assert "done: 2 steps" in stdout
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for key in METRIC_KEYS:
            assert key in record, key
        assert record["seconds_per_step"] > 0
        assert 0.0 <= record["accuracy"] <= 1.0
        if strategy == "none":
            assert record["rhythm_seconds"] == 0.0 and record["rhythm/gamma_mean"] == 1.0
        else:
            assert record["rhythm_seconds"] > 0 and "rhythm/anchor_share" in record
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "final" / "config.json").is_file() and (out / "final" / "tokenizer.json").is_file()
    saved = TrainSettings.from_yaml(out / "settings.yaml")
    assert saved.strategy == strategy and saved.model == str(tiny_dir) and saved.steps == 2
    assert saved.task_options["n_numbers"] == [2, 2]
    # the same directory again without --resume/--overwrite is refused
    code, _, err = run(capsys, "train", "--config", tiny_yaml, "--model", tiny_dir, "--out", out)
    assert code != 0 and "--resume" in one_error_line(err)


def test_resume_continues_from_newest_checkpoint(capsys, tiny_dir, tiny_yaml, tmp_path):
    out = tmp_path / "run"
    args = ("--config", tiny_yaml, "--model", tiny_dir, "--strategy", "coupled", "--save-steps", "1")
    code, _, err = run(capsys, "train", *args, "--out", out)
    assert code == 0, err
    assert (out / "checkpoint-2").is_dir()
    # a torn run: a stale record beyond the checkpoint must not survive the resume
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 3, "reward_mean": -1.0}) + "\n")
    code, stdout, err = run(capsys, "train", "--out", out, "--steps", 3, "--resume")
    assert code == 0, err
    assert "resumed from checkpoint-2" in stdout
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["reward_mean"] != -1.0 and "rhythm/gamma_mean" in records[-1]
    assert (out / "checkpoint-3").is_dir()
    assert TrainSettings.from_yaml(out / "settings.yaml").steps == 3
    # nothing left to do
    code, _, err = run(capsys, "train", "--out", out, "--steps", 3, "--resume")
    assert code != 0 and "larger --steps" in one_error_line(err)


def test_heads_refresh_run_saves_and_resumes_its_head_set(capsys, tiny_dir, tiny_yaml, tmp_path):
    out = tmp_path / "run"
    args = ("--config", tiny_yaml, "--model", tiny_dir, "--heads", "refresh:1", "--save-steps", "1")
    code, _, err = run(capsys, "train", *args, "--gamma-norm", "mean", "--out", out)
    assert code == 0, err
    records = read_metrics(out)
    assert [r["rhythm/heads_refreshes"] for r in records] == [0.0, 1.0]
    assert records[0]["rhythm/gamma_mean"] == pytest.approx(1.0, abs=1e-6)  # gamma_norm mean
    saved = json.loads((out / "checkpoint-2" / "rhythm_heads.json").read_text())
    assert saved["refreshes"] == 1 and saved["heads"]["format"] == "attnrhythm-heads"
    assert json.loads((out / "final" / "rhythm_heads.json").read_text()) == saved
    settings = TrainSettings.from_yaml(out / "settings.yaml")
    assert settings.rhythm_config().analysis_config().heads_refresh == 1 and settings.gamma_norm == "mean"
    code, _, err = run(capsys, "train", "--out", out, "--steps", 3, "--resume")
    assert code == 0, err
    last = read_metrics(out)[-1]
    assert last["step"] == 3 and last["rhythm/heads_refreshes"] == 2.0 and "rhythm/heads_changed" in last


def test_yaml_load_override_and_unknown_key(tmp_path, tiny_yaml):
    settings = TrainSettings.from_yaml(tiny_yaml)
    assert settings.task == "countdown" and settings.steps == 2 and settings.num_generations == 2
    assert settings.rhythm_config().fai_horizon == (2, 8)
    credit = settings.rhythm_config().credit_config()
    assert (credit.gamma_norm, credit.shape) == ("none", "positive")
    knobs = settings.replace(gamma_norm="mean", shape="both").rhythm_config().credit_config()
    assert (knobs.gamma_norm, knobs.shape) == ("mean", "both")
    changed = settings.replace(steps=5, strategy="global", seed=None)
    assert changed.steps == 5 and changed.strategy == "global" and changed.seed == settings.seed
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 2\nlearning_rat: 0.1\n", encoding="utf-8")
    with pytest.raises(AttnRhythmError, match="unknown setting 'learning_rat'"):
        TrainSettings.from_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [2\n", encoding="utf-8")
    with pytest.raises(AttnRhythmError, match="not valid YAML"):
        TrainSettings.from_yaml(broken)
    with pytest.raises(AttnRhythmError, match="multiple of num_generations"):
        TrainSettings(num_generations=3, per_device_train_batch_size=4)
    with pytest.raises(AttnRhythmError, match="rhythm option 'windo'"):
        TrainSettings(rhythm_options={"windo": 3})


def test_dataset_is_chat_formatted_and_same_for_every_strategy(tiny_dir, tiny_yaml):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    settings = TrainSettings.from_yaml(tiny_yaml)
    first = build_dataset(settings, tok)
    other = build_dataset(settings.replace(strategy="none"), tok)
    assert first[0]["prompt"] == [{"role": "user", "content": training_prompts(settings)[0]}]
    assert first.to_list() == other.to_list()
    plain = build_dataset(settings.replace(chat=False), tok)
    assert isinstance(plain[0]["prompt"], str)


def test_heldout_excludes_training_prompts():
    task = get_task("arithmetic", max_operand=3)
    train_prompts = [ex["prompt"] for ex in task.examples(10, seed=0)]
    held = heldout_examples(task, 10, eval_seed=10_000, exclude_prompts=train_prompts)
    assert held and not {ex["prompt"] for ex in held} & set(train_prompts)
    assert len(held) < 10  # 3x3x2 expressions only: some overlap was dropped


def test_evaluate_counts_exact_answers(embedded_dir):
    """Accuracy is reward == 1.0; a stub model that always answers the right box scores 1."""
    task = get_task("arithmetic")
    examples = task.examples(3, seed=1)
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    answers = iter(["\\boxed{" + ex["answer"] + "}" for ex in examples] + ["no idea"] * 6)

    import attnrhythm.train.evaluate as ev

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    def fake_generate(model, tokenizer, prompts, **kwargs):
        return [tok(next(answers), add_special_tokens=False)["input_ids"] for _ in prompts]

    mp = pytest.MonkeyPatch()
    mp.setattr(ev, "generate", fake_generate)
    try:
        result = evaluate(
            Stub(),
            tok,
            task,
            n=3,
            samples=2,
            temperature=1.0,
            seed=0,
            max_new_tokens=8,
            batch_size=2,
            examples=examples,
        )
    finally:
        mp.undo()
    assert result["pass@1"] == 1.0 and result["avg@K"] == 0.0 and result["pass@K"] == 0.0
    assert result["n"] == 3 and result["K"] == 2 and len(result["problems"]) == 3


def test_eval_prints_table_and_writes_json(capsys, tiny_dir, tmp_path):
    out = tmp_path / "results.json"
    code, stdout, err = run(
        capsys,
        "eval",
        "--model",
        tiny_dir,
        "--task",
        "arithmetic",
        "--n",
        3,
        "--samples",
        2,
        "--max-new-tokens",
        6,
        "--out",
        out,
    )
    assert code == 0, err
    assert "pass@1" in stdout and "avg@2" in stdout
    result = json.loads(out.read_text())
    for key in ("pass@1", "avg@K", "pass@K", "mean_reward", "n", "K", "problems"):
        assert key in result, key
    assert result["n"] == 3 and result["K"] == 2 and len(result["problems"][0]["rewards"]) == 2


RG_SUMS = "rg:chain_sum:min_terms=2,max_terms=2,min_digits=1,max_digits=1"


def test_train_and_eval_on_a_reasoning_gym_task(capsys, tiny_dir, tmp_path):
    """A 2-step run on an rg: task, then eval of that run: its task, its prompts left out."""
    out = tmp_path / "rg-run"
    code, stdout, err = run(
        capsys, "train", "--model", tiny_dir, "--task", RG_SUMS, "--task-option", "answer_format=boxed",
        "--strategy", "none", "--steps", 2, "--num-generations", 2, "--batch-size", 4,
        "--max-completion-length", 8, "--n-train", 8, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "done: 2 steps" in stdout and RG_SUMS in err.replace("\n", "")
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    saved = TrainSettings.from_yaml(out / "settings.yaml")
    assert saved.task == RG_SUMS and saved.task_options == {"answer_format": "boxed"}
    train_prompts = set(training_prompts(saved))
    assert len(train_prompts) == 8 and all(p.endswith("\\boxed{answer}.") for p in train_prompts)

    results = tmp_path / "eval.json"
    code, stdout, err = run(
        capsys, "eval", "--model", out, "--n", 3, "--samples", 1, "--max-new-tokens", 6, "--out", results
    )
    assert code == 0, err
    assert "rg:chain_sum" in stdout
    result = json.loads(results.read_text())
    assert result["n"] == 3 and result["K"] == 1
    held = heldout_examples(saved.make_task(), 3, exclude_prompts=train_prompts)
    assert [p["id"] for p in result["problems"]] == [ex["id"] for ex in held]
    assert not {ex["prompt"] for ex in held} & train_prompts


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("train", "--task", "rg:chain_sum:min_terms=x"), "must be an integer"),
        (("train", "--task", "rg:chain_sum", "--task-option", "size=9"), "set by attnrhythm"),
        (("eval", "--task", "rg:gsm_symbolc"), "did you mean gsm_symbolic"),
        (("eval", "--task", "rg:countdown:colour=red"), "no option colour"),
        (("train", "--task", "chess"), "unknown task"),
        (("train", "--strategy", "best"), "unknown credit strategy"),
        (("train", "--credit-forward", "both"), "bad credit forward"),
        (("train", "--gamma-norm", "sum"), "bad gamma_norm"),
        (("train", "--shape", "negative"), "bad shape"),
        (("train", "--heads", "refresh:0"), "refresh:K"),
        (("train", "--heads", "/nonexistent/heads.json"), "does not exist"),
        (("train", "--num-iterations", 0), "num_iterations"),
        (("train", "--steps", 0), "steps"),
        (("train", "--model", "/nonexistent/model-dir", "--steps", 1), "does not exist"),
        (("train", "--task-option", "n_numbers"), "KEY=VALUE"),
        (("eval", "--task", "chess"), "unknown task"),
        (("eval", "--n", 0), "--n"),
        (("eval", "--model", "/nonexistent/model-dir"), "does not exist"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, args, needle):
    code, _, err = run(capsys, *args, *(("--out", tmp_path / "o") if args[0] == "train" else ()))
    assert code != 0
    assert needle in one_error_line(err)


def test_fused_credit_forward(capsys, tiny_dir, tiny_yaml, tmp_path):
    """--num-iterations 2: captured in TRL's old-logprob forward; without it: in the loss forward."""
    base = ("train", "--config", tiny_yaml, "--model", tiny_dir, "--credit-forward", "fused")
    code, _, err = run(capsys, *base, "--num-iterations", "2", "--out", tmp_path / "fused")
    assert code == 0, err
    records = read_metrics(tmp_path / "fused")
    assert [r["step"] for r in records] == [1]  # a record per rollout batch, which serves 2 steps
    assert records[0]["rhythm/fused"] == 1.0 and records[0]["rhythm/gamma_mean"] > 1.0
    assert TrainSettings.from_yaml(tmp_path / "fused" / "settings.yaml").credit_forward == "fused"
    code, _, err = run(capsys, *base, "--out", tmp_path / "loss")
    assert code == 0, err
    records = read_metrics(tmp_path / "loss")
    assert records and {r["rhythm/fused"] for r in records} == {2.0}
    entropy = ("--strategy", "entropy", "--num-iterations", "2")
    code, _, err = run(capsys, *base, *entropy, "--out", tmp_path / "e")
    assert code != 0 and err.strip().splitlines()[-1].startswith("error: ") and "entropy" in err


def test_bad_config_and_resume_without_checkpoint(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 2\nstrategyy: coupled\n", encoding="utf-8")
    code, _, err = run(capsys, "train", "--config", bad, "--out", tmp_path / "o")
    assert code != 0 and "unknown setting 'strategyy'" in one_error_line(err)
    bad.write_text("- just\n- a list\n", encoding="utf-8")
    code, _, err = run(capsys, "train", "--config", bad)
    assert code != 0 and "mapping" in one_error_line(err)
    code, _, err = run(capsys, "train", "--config", tmp_path / "missing.yaml")
    assert code != 0 and "does not exist" in one_error_line(err)
    code, _, err = run(capsys, "train", "--resume", "--out", tmp_path / "empty")
    assert code != 0 and "no checkpoint" in one_error_line(err)
