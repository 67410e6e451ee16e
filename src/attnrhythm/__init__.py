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

import sys
from typing import TYPE_CHECKING, Any

from attnrhythm.errors import AttnRhythmError
from attnrhythm.lazy import lazy_exports

if TYPE_CHECKING:
    from attnrhythm.analyze import TraceResult
    from attnrhythm.config import AnalysisConfig

# The public API, imported on first use (PEP 562): ``import attnrhythm.cli`` builds the command
# line's help without loading torch.
_EXPORTS = {
    "AnalysisConfig": "attnrhythm.config",
    "Analyzer": "attnrhythm.analyze",
    "TraceInput": "attnrhythm.analyze",
    "TraceResult": "attnrhythm.analyze",
    "load_heads_file": "attnrhythm.analyze",
    "generate": "attnrhythm.generate",
    "make_trace": "attnrhythm.generate",
    "STRATEGIES": "attnrhythm.method.config",
    "CreditConfig": "attnrhythm.method.config",
    "gamma": "attnrhythm.method.credit",
    "shape_advantages": "attnrhythm.method.credit",
    "read_inputs": "attnrhythm.records",
    "read_records": "attnrhythm.records",
    "GenerationConfig": "attnrhythm.runner",
    "analyze_items": "attnrhythm.runner",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__version__ = "0.1.0"

if "IPython" in sys.modules:  # a notebook: TraceResult displays itself with the report view
    import attnrhythm.views.report  # noqa: F401,E402


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
    from attnrhythm.analyze import Analyzer
    from attnrhythm.generate import make_trace

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
