"""RhythmGRPOTrainer in 2 real processes (torchrun, gloo, CPU): shaping, gathered metrics, checkpoints.

The ranks run tests/distributed_train.py: a separate-credit run of 2 steps with a checkpoint per
step, that run resumed to step 3, a fused-credit run (``num_iterations=2``), and the loss-forward
path (``num_iterations=1``, gradient accumulation 2) next to the same run with the separate forward.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

pytestmark = pytest.mark.embedded

WORLD = 2
ALLOWED = torch.tensor([1.0, 1.25, 1.5, 1.75])  # gamma values with amp 1.5, alpha 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_shaping(before: torch.Tensor, mask: torch.Tensor, after: torch.Tensor) -> None:
    """(B, T) advantages: gamma * A where A >= 0 (gamma in ALLOWED), A untouched where A < 0."""
    assert after.dim() == 2 and after.shape == mask.shape and after.shape[0] == before.shape[0]
    plain = before[:, None].expand_as(after)
    keep = (plain <= 0) | ~mask.bool()
    assert torch.equal(after[keep], plain[keep])
    pos = (plain > 0) & mask.bool()
    assert pos.any() and (plain < 0).any()
    ratio = after[pos] / plain[pos]
    assert torch.isclose(ratio[:, None], ALLOWED[None, :], atol=1e-5).any(dim=1).all(), ratio
    assert (ratio > 1 + 1e-6).any()


def test_two_processes_torchrun(embedded_dir, tmp_path):
    script = Path(__file__).with_name("distributed_train.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(embedded_dir),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for got in ranks:
        assert all(got[name]["world"] == WORLD for name in got)
        assert got["separate"]["global_step"] == 2 and got["resumed"]["global_step"] == 3
        assert got["fused"]["global_step"] == 2
        assert len(got["separate"]["records"]) == 2 and len(got["resumed"]["records"]) == 1
        assert len(got["fused"]["records"]) == 1  # one rollout batch used for 2 iterations
        for name in ("separate", "resumed", "fused"):
            for before, mask, after in got[name]["records"]:
                check_shaping(before, mask, after)
        assert got["resumed"]["logs"][-1]["step"] == 3
        fused = [h["rhythm/fused"] for h in got["fused"]["logs"] if "rhythm/fused" in h]
        assert fused == [1.0]
        assert {h["rhythm/fused"] for h in got["separate"]["logs"]} == {0.0}
        # the loss path: every micro-batch (2 per step, 2 rows each) shaped in its own loss forward
        assert got["loss"]["path"] == "loss" and got["loss-separate"]["path"] == "separate"
        assert {h["rhythm/fused"] for h in got["loss"]["logs"]} == {2.0}
        assert len(got["loss"]["records"]) == 4 and len(got["loss-separate"]["records"]) == 2
        for before, mask, after in got["loss"]["records"]:
            plain = before[:, None].expand_as(after)
            keep = (plain < 0) | ~mask.bool()
            assert after.shape == mask.shape and torch.equal(after[keep], plain[keep])
        assert any(not torch.equal(a, b[:, None].expand_as(a)) for b, _, a in got["loss"]["records"])
        # ... and trains to the same weights as the separate forward (DDP-averaged gradients)
        for name, value in got["loss-separate"]["params"].items():
            torch.testing.assert_close(got["loss"]["params"][name], value, rtol=0, atol=0, msg=name)

    # each rank shaped its own slice of the batch
    assert not torch.equal(ranks[0]["separate"]["records"][0][2], ranks[1]["separate"]["records"][0][2])
    # the rhythm/* metrics are gathered: the same on both ranks
    for name in ("separate", "resumed", "fused", "loss"):
        logs = [got[name]["logs"] for got in ranks]
        assert logs[0] == logs[1] and any("rhythm/gamma_mean" in h for h in logs[0])
    # rank 0 alone writes the model (transformers' should_save; each rank writes its rng_state_<rank>.pth)
    run = tmp_path / "run"
    assert [len(got["separate"]["saves"]) for got in ranks] == [2, 0]
    assert [len(got["resumed"]["saves"]) for got in ranks] == [1, 0]
    for step in (1, 2, 3):
        files = {p.name for p in (run / f"checkpoint-{step}").iterdir()}
        assert "model.safetensors" in files and "trainer_state.json" in files
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= files
