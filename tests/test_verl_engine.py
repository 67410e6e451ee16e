"""The verl worker's rhythm credit on a real verl FSDP2 engine, on the CPU, with 1 and 2 gloo ranks.

Each rank is a fresh process (tests/verl_engine_run.py) so verl loads the test-only CPU platform
(tests/verl_cpu_platform.py) through ``VERL_USE_EXTERNAL_MODULES`` before anything else. gamma from
``RhythmActorRolloutRefWorker.compute_rhythm_credit`` (nested and padded layouts) must equal
``rollout_gamma`` with the plain transformers model on the same sequences, and verl's own
log-probs must not change across the credit call.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
import torch  # noqa: E402
from verl_models import tiny_model  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("verl_tiny"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, model_dir: Path, out_dir: Path, script: str = "verl_engine_run.py") -> list[dict]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            VERL_USE_EXTERNAL_MODULES="verl_cpu_platform",
            VERL_PLATFORM="cpu",
            VERL_ENGINE_DEVICE="cuda",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
        )
        log = open(out_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        cmd = [
            sys.executable,
            str(TESTS / script),
            str(model_dir),
            str(out_dir / f"rank{rank}.pt"),
        ]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    for rank, (proc, _) in enumerate(procs):
        tail = (out_dir / f"rank{rank}.log").read_text()[-3000:]
        assert proc.returncode == 0, f"rank {rank} failed:\n{tail}"
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def check_rank(res: dict) -> None:
    ref = res["reference"]
    lengths = res["response_lengths"]
    # nested layout: one row per response, its own length
    assert [g.shape[0] for g in res["gamma_nested"]] == lengths
    for b, g in enumerate(res["gamma_nested"]):
        torch.testing.assert_close(g, ref[b, : lengths[b]], rtol=0, atol=0)
        assert torch.all(ref[b, lengths[b] :] == 1)
    # padded layout: the (B, T) grid of responses
    torch.testing.assert_close(res["gamma_padded"], ref, rtol=0, atol=0)
    # the credit is not trivial, and rows outside the loss (tool output) keep gamma = 1
    assert (ref > 1).any()
    # counts: one row per sequence, summing to the reference's totals
    from attnrhythm.rollout.credit import COUNT_KEYS

    expected = torch.tensor([res["reference_counts"][k] for k in COUNT_KEYS], dtype=torch.float64)
    for counts in (res["counts_nested"], res["counts_padded"]):
        assert counts.shape == (len(lengths), len(COUNT_KEYS))
        assert torch.all(counts[:, COUNT_KEYS.index("sequences")] == 1)
        torch.testing.assert_close(counts.sum(0), expected)
    # verl's own forward is unchanged (the attention implementation was restored)
    assert res["attn"][0] == res["attn"][1] == "sdpa"
    torch.testing.assert_close(res["log_probs_after"], res["log_probs_before"], rtol=0, atol=0)


def test_credit_on_fsdp2_engine_one_rank(model_dir, tmp_path):
    (res,) = run_ranks(1, model_dir, tmp_path)
    check_rank(res)


def test_credit_on_fsdp2_engine_two_gloo_ranks(model_dir, tmp_path):
    results = run_ranks(2, model_dir, tmp_path)
    for res in results:
        check_rank(res)
    # rank 1's 1-token responses are not analysed (gamma = 1): it ran 1 credit forward, rank 0 ran 2
    assert results[0]["reference_counts"]["analysed"] == 4
    assert results[1]["reference_counts"]["analysed"] == 2
    assert torch.all(results[1]["gamma_padded"][[0, 3]] == 1)
    # tool output inside a response (rank 0 row 1, tokens 4..7) keeps gamma = 1
    assert torch.all(results[0]["gamma_padded"][1, 4:8] == 1)
