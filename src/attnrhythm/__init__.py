"""attnrhythm: the preplan-and-anchor rhythm of a causal LM, read from its attention in one
streaming pass, and attention-derived token credit for RL (see docs/method.md).

Python API (mirrors the CLI)::

    from attnrhythm import load_model, analyze_text, AnalysisConfig
    model, tok = load_model("embedded")
    result = analyze_text(model, tok, "What is 2+3?", "2 plus 3 is 5.")
    result.waad, result.fai, result.roles.anchor, result.gamma["coupled"]
    record = result.to_record(tok)          # the JSONL record of `attnrhythm analyze`
"""

from __future__ import annotations

from typing import Any

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput, TraceResult, load_heads_file
from attnrhythm.errors import AttnRhythmError
from attnrhythm.generate import generate, make_trace
from attnrhythm.method.credit import STRATEGIES, CreditConfig, gamma, shape_advantages
from attnrhythm.records import read_inputs, read_records
from attnrhythm.runner import GenerationConfig, analyze_items

__version__ = "0.1.0"


def load_model(spec: str = "embedded", **kwargs: Any):
    """(model, tokenizer) for 'embedded', a checkpoint directory, a .gguf file or a cached hub id."""
    from attnrhythm.models import load_model as _load

    return _load(spec, **kwargs)


def analyze_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    response: str,
    config: AnalysisConfig | None = None,
    *,
    chat: bool = True,
) -> TraceResult:
    """Analyse one prompt/response pair (the API twin of ``attnrhythm analyze --prompt --response``)."""
    trace = make_trace(tokenizer, prompt, response, chat=chat, meta={"prompt": prompt, "response": response})
    result = Analyzer(model, config).analyze([trace])[0]
    result.tokenizer = tokenizer  # tokens in to_record() and the notebook view
    return result


__all__ = [
    "STRATEGIES",
    "AnalysisConfig",
    "Analyzer",
    "AttnRhythmError",
    "CreditConfig",
    "GenerationConfig",
    "TraceInput",
    "TraceResult",
    "analyze_items",
    "analyze_text",
    "gamma",
    "generate",
    "load_heads_file",
    "load_model",
    "make_trace",
    "read_inputs",
    "read_records",
    "shape_advantages",
]
