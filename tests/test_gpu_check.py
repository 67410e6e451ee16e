"""benchmarks/gpu_check.py at toy sizes on CPU (``--device cpu --quick``): its logic runs in CI.

The GPU run itself (Qwen3-8B shapes in bf16/fp16, 8K and 32K tokens) needs a CUDA device; this
test runs the same code paths on a toy Qwen3 and checks the JSON it writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    out = tmp_path / "check.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick"]
    done = subprocess.run(
        [*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu_check on" in done.stdout  # the printed table
    report = json.loads(out.read_text())

    assert [r["dtype"] for r in report["reference"]] == ["bfloat16", "float16"]
    for ref in report["reference"]:
        assert ref["passed"] and ref["tolerance"] > 0
        assert set(ref["reduction_errors"]) == {"span", "waad_rows", "fai_columns", "receiver_columns"}
        assert all(0 <= v <= ref["tolerance"] for v in ref["reduction_errors"].values())
        assert all(0 <= v < 1e-2 for v in ref["metric_errors"].values())
        assert ref["same_head_classes"] and ref["same_receiver_heads"]
        assert set(ref["routes"].values()) == {"fused"}  # the fused route on every analysed layer
        assert [int(k) for k in ref["routes"]] == ref["layers"]

    assert [t["tokens"] for t in report["timing"]] == [128, 256]
    for t in report["timing"]:
        assert t["dtype"] == "bfloat16"
        assert all(s > 0 for s in t["seconds"].values())
        assert t["capture_over_plain"] > 0 and t["analysis_over_plain"] > 0
        assert set(t["routes"].values()) == {"fused"}
        assert t["peak_bytes"]["plain_sdpa"] is None  # CUDA peaks only
    assert set(report["routes"]) == {"reference-bfloat16", "reference-float16", "timing-128", "timing-256"}

    grpo = report["grpo"]
    assert grpo["steps"] == 2 and grpo["credit_path"] == "loss"
    assert grpo["rhythm_fused"] == [2.0, 2.0]  # statistics from TRL's loss forward
    assert all(g > 1.0 for g in grpo["gamma_mean"]) and grpo["loss_finite"]
    assert grpo["seconds_per_step"] > 0 and grpo["loss_forward_with_capture_s"] > 0
