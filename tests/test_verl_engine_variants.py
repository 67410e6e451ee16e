"""The worker's rhythm credit on verl's FSDP2 engine with LoRA and with parameter offload (1 CPU rank).

tests/verl_engine_variants_run.py builds ``RhythmActorRolloutRefWorker`` with the changed actor
config. LoRA: verl's engine module is then a PEFT ``PeftModel``; gamma must equal
``rollout_gamma`` on a plain PEFT model with the engine's weights (adapters active), match the
merged model, and differ from the base model's. Offload: gamma equals ``rollout_gamma`` on the
plain model (verl moves the parameters back for the credit through ``eval_mode()``; on the CPU
platform the device is the CPU either way, so this checks verl's offload code path, not a device
move).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("peft")
import torch  # noqa: E402
from test_verl_engine import _free_port  # noqa: E402
from test_verl_loop import WORKER_ENV  # noqa: E402
from verl_models import tiny_model  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("verl_variants_tiny"))


def run_variant(variant: str, model_dir: Path, out_dir: Path) -> dict:
    env = dict(
        os.environ,
        **WORKER_ENV,  # the CPU platform, as in verl's own loop test
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
    )
    out = out_dir / f"{variant}.pt"
    cmd = [sys.executable, str(TESTS / "verl_engine_variants_run.py"), variant, str(model_dir), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, f"{variant} failed:\n{(done.stdout + done.stderr)[-3000:]}"
    res = torch.load(out, weights_only=False)
    assert "error" not in res, res.get("error")
    return res


def check_gamma(res: dict, reference: torch.Tensor, *, exact: bool = True) -> None:
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-4, atol=1e-4)
    for b, (gamma, n) in enumerate(zip(res["gamma"], res["response_lengths"])):
        torch.testing.assert_close(gamma, reference[b, :n], **tol)
    assert (reference > 1).any()


def test_lora_actor_credit_analyses_the_adapted_model(model_dir, tmp_path):
    res = run_variant("lora", model_dir, tmp_path)
    assert res["module"].startswith("FSDP") and "Peft" in res["module"]
    adapted, merged = res["references"]
    check_gamma(res, adapted)  # the PEFT model's causal LM, adapters active: exactly
    check_gamma(res, merged, exact=False)  # the merged model (W + BA): up to float rounding
    assert not torch.equal(res["base_gamma"], adapted)  # the adapters are not ignored


def test_param_and_optimizer_offload_actor_credit(model_dir, tmp_path):
    res = run_variant("offload", model_dir, tmp_path)
    (plain,) = res["references"]
    check_gamma(res, plain)
