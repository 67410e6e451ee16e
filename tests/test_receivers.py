"""Receiver heads (Thought Anchors): streaming column scores and kurtosis vs a dense computation."""

from __future__ import annotations

import numpy as np
import torch
from dense import dense_analysis
from transformers import Qwen3Config, Qwen3ForCausalLM

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput
from attnrhythm.method.rhythm import kurtosis, receiver_heads


def np_kurtosis(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    d = x - x.mean()
    return float((d**4).mean() / (d**2).mean() ** 2 - 3.0)


def test_kurtosis_matches_numpy_and_ignores_nan():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0, float("nan")], [0.5, 0.5, 0.6, 0.4, 3.0]])
    got = kurtosis(x)
    for row, value in zip(x.numpy(), got.tolist()):
        assert abs(value - np_kurtosis(row.astype(np.float64))) < 1e-9


def test_planted_receiver_head_is_found():
    n, prox = 40, 3
    counts = torch.clamp(n - prox - torch.arange(n, dtype=torch.float64), min=0)  # |{t >= s+prox}|
    scores = 0.05 + 0.01 * torch.rand(2, 3, n, dtype=torch.float64)
    scores[1, 2, 7] = 0.6  # one head pours attention into one token: heavy-tailed scores
    heads, kurt = receiver_heads(scores * counts, proximity=prox, count=1)
    assert heads == [(1, 2)]
    assert kurt[1, 2] == kurt.max()


def test_receivers_and_their_fai_match_dense():
    torch.manual_seed(1)
    config = Qwen3Config(
        vocab_size=89,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )
    model = Qwen3ForCausalLM(config).eval()
    ids = torch.randint(0, 89, (70,)).tolist()
    r0, prox = 10, 3
    res = Analyzer(
        model, AnalysisConfig(layers="all", proximity=prox, receiver_count=3, tile_size=9)
    ).analyze([TraceInput(ids, r0)])[0]
    dense = dense_analysis(model, ids, r0, [0, 1])
    maps = dense.maps.numpy()
    n = len(ids)
    kurt = np.zeros((2, 4))
    for li in range(2):
        for h in range(4):
            scores = np.array(
                [maps[li, h, s + prox :, s].mean() if s + prox < n else np.nan for s in range(r0, n)]
            )
            kurt[li, h] = np_kurtosis(scores)
    order = sorted(range(8), key=lambda i: (-kurt.flat[i], i))[:3]
    expected = sorted((i // 4, i % 4) for i in order)
    assert res.receivers == expected
    a_recv = np.mean([maps[li, h] for li, h in expected], axis=0)
    for s in range(r0, n):
        ts = [t for t in range(s + 10, min(s + 50, n - 1) + 1)]
        want = a_recv[ts, s].mean() if ts else np.nan
        got = float(res.fai_receiver[s - r0])
        assert (np.isnan(want) and np.isnan(got)) or abs(want - got) < 1e-6
