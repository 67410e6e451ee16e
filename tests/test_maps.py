"""Map blocks kept by --save-maps equal the dense mean maps; compute_maps reproduces them."""

from __future__ import annotations

import pytest
import torch
from dense import dense_analysis
from tiny_llama import tiny_llama

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput, compute_maps
from attnrhythm.errors import AttnRhythmError


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=3)


def test_saved_maps_match_dense(tiny):
    torch.manual_seed(0)
    traces = [
        TraceInput(torch.randint(0, 97, (60,)).tolist(), 9),
        TraceInput(torch.randint(0, 97, (41,)).tolist(), 4),
    ]
    results = Analyzer(tiny, AnalysisConfig(layers="all", save_maps="3:30", tile_size=7)).analyze(traces)
    for trace, res in zip(traces, results):
        dense = dense_analysis(tiny, trace.input_ids, trace.response_start, [0, 1, 2])
        a = trace.response_start + 3
        e = trace.response_start + res.maps["span"][1]
        loc = torch.stack([dense.maps[li, h] for li, h in dense.local]).mean(0)[a:e, a:e]
        glob = torch.stack([dense.maps[li, h] for li, h in dense.global_]).mean(0)[a:e, a:e]
        torch.testing.assert_close(res.maps["local"].double(), loc, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.maps["global"].double(), glob, rtol=1e-5, atol=1e-6)
    assert results[0].maps["span"] == [3, 30]
    assert results[1].maps["span"] == [3, 30]


def test_span_clipped_to_response_and_recomputed(tiny):
    trace = TraceInput(list(range(1, 40)), 20)
    res = Analyzer(tiny, AnalysisConfig(save_maps="0:128")).analyze([trace])[0]
    record = res.to_record()
    assert record["maps"]["span"] == [0, 19]
    again = compute_maps(tiny, None, record, "0:128")
    assert again["span"] == [0, 19]
    torch.testing.assert_close(torch.tensor(again["local"]), torch.tensor(record["maps"]["local"]))


@pytest.mark.parametrize(
    ("span", "needle"),
    [("30:40", "outside the response"), ("0:600", "at most 512"), ("5", "START:END"), ("9:3", "START < END")],
)
def test_bad_span(tiny, span, needle):
    with pytest.raises(AttnRhythmError, match=needle):
        Analyzer(tiny, AnalysisConfig(save_maps=span)).analyze([TraceInput(list(range(1, 40)), 20)])
