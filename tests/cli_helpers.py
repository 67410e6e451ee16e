"""Running ``attnrhythm.cli.main`` in tests and reading its one-line errors."""

from __future__ import annotations

import pytest

from attnrhythm.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``attnrhythm ARGS``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of stderr (fails if there is more or less)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    return lines[0]


def save_tiny_llama(path, tokenizer_dir, **overrides):
    """Save a tiny random Llama (seed 0) with the tokenizer of ``tokenizer_dir`` beside it; the
    config fields in ``overrides`` replace the defaults (3 layers, hidden 32, 4 heads, 2 kv heads)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    settings = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    settings.update(overrides)
    LlamaForCausalLM(LlamaConfig(**settings)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
