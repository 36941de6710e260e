"""The run folder: where each stage leaves its output, and how later stages read it back.

    <run>/config.yaml      the resolved recipe (written by `tunewright run` and `train`)
    <run>/data/            the prepared dataset; `summary.json`, written last, marks it complete
    <run>/checkpoints/     resumable training state
    <run>/adapter/         the trained LoRA adapter (peft folder + tokenizer), or
    <run>/model/           the fully fine-tuned model (transformers folder + tokenizer)
    <run>/training.json    what training did (steps, seconds, losses, precision)
    <run>/eval/            evaluation results
    <run>/report.md, report.html
    <run>/export/          exported artifacts

A shared layer: the stages write and read run folders through this module, so none of them
re-derives the layout or imports another stage to find out what a folder holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from tunewright.config import RunConfig, load_config
from tunewright.dataset.prepared import SUMMARY_FILE, PreparedDataset, load_prepared
from tunewright.errors import ModelLoadError, RunFolderError
from tunewright.files import atomic_folder, write_text_atomic
from tunewright.hardware import torch_dtype
from tunewright.models import LoadedModel, load_model

Method = Literal["lora", "full"]

ADAPTER_CONFIG = "adapter_config.json"  # peft writes it into every adapter folder
MODEL_CONFIG = "config.json"  # transformers writes it into every model folder


@dataclass(frozen=True)
class Trained:
    """What training left in a run folder: the method, and the adapter or model folder."""

    method: Method
    folder: Path

    @classmethod
    def at(cls, folder: Path) -> Trained:
        """Classify a trained folder by its contents: a peft adapter or a whole model."""
        if (folder / ADAPTER_CONFIG).is_file():
            return cls("lora", folder)
        if (folder / MODEL_CONFIG).is_file():
            return cls("full", folder)
        raise RunFolderError(
            f"no trained model at {folder} (no {ADAPTER_CONFIG} or {MODEL_CONFIG}); "
            "run `tunewright train` first"
        )


@dataclass(frozen=True)
class RunFolder:
    """The layout of one run folder; every stage asks here where a run's files are."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def training_summary_file(self) -> Path:
        return self.path / "training.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def trained_dir(self, method: Method) -> Path:
        """Where training with `method` saves its output (whether or not it has yet)."""
        return self.path / ("adapter" if method == "lora" else "model")

    def is_run(self) -> bool:
        """True for a folder a run wrote: it has a config.yaml, an adapter/ or a model/."""
        return self.path.is_dir() and (
            self.config_file.is_file()
            or self.trained_dir("lora").is_dir()
            or self.trained_dir("full").is_dir()
        )

    def trained(self) -> Trained:
        """The run's trained adapter or model; raises RunFolderError when there is none."""
        if not self.path.is_dir():
            raise RunFolderError(f"run folder not found: {self.path}")
        for method in ("lora", "full"):
            folder = self.trained_dir(method)
            if (folder / (ADAPTER_CONFIG if method == "lora" else MODEL_CONFIG)).is_file():
                return Trained(method, folder)
        if not self.is_run():
            raise RunFolderError(
                f"{self.path} is not a run folder (no config.yaml, adapter/ or model/ inside)"
            )
        raise RunFolderError(
            f"{self.path} holds no trained model (no adapter/ or model/); "
            "run `tunewright train` first"
        )

    def has_prepared_data(self) -> bool:
        """True once `prepare` has finished writing the run's data folder."""
        return (self.data_dir / SUMMARY_FILE).is_file()


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as peft recorded it."""
    return json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def read_run_config(run_dir: Path) -> RunConfig:
    """The run's resolved config.

    A run folder without config.yaml (trained by an older version, or copied without it) still
    names its base model in the adapter's own config, so that is used with defaults for the rest.
    """
    run = RunFolder(run_dir)
    if run.config_file.is_file():
        return load_config(run.config_file)
    trained = run.trained()
    if trained.method == "lora":
        base = adapter_base_model(trained.folder)
        return RunConfig(name=run_dir.name, output_dir=str(run_dir.parent), model={"name": base})
    return RunConfig(name=run_dir.name, output_dir=str(run_dir.parent), train={"method": "full"})


def load_trained(
    trained: Trained, base_model: str, *, dtype: torch.dtype, trust_remote_code: bool = False
) -> LoadedModel:
    """Load a trained model for inference: `base_model` with the adapter on it, unmerged (LoRA),
    or the fully fine-tuned model with its own tokenizer."""
    if trained.method == "full":
        return load_model(str(trained.folder), dtype=dtype, trust_remote_code=trust_remote_code)
    from peft import PeftModel

    loaded = load_model(base_model, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        loaded.model = PeftModel.from_pretrained(loaded.model, trained.folder)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"could not load the adapter in {trained.folder}: {e}") from None
    loaded.model.eval()
    return loaded


@dataclass
class TunedRun:
    run_dir: Path
    cfg: RunConfig
    method: Method
    trained_dir: Path  # <run>/adapter or <run>/model
    model: torch.nn.Module  # a PeftModel (unmerged) for LoRA, the model itself for full fine-tuning
    tokenizer: PreTrainedTokenizerBase


def load_tuned(run_dir: str | Path, *, dtype: torch.dtype | None = None) -> TunedRun:
    """Load a run's tuned model: base + adapter (unmerged) for LoRA, the model for full.

    `dtype` defaults to what the run's precision setting gives on this machine
    (`tunewright.hardware`); export passes `REFERENCE_DTYPE`.
    """
    run_dir = Path(run_dir)
    trained = RunFolder(run_dir).trained()
    cfg = read_run_config(run_dir)
    loaded = load_trained(
        trained,
        cfg.model.name,
        dtype=dtype if dtype is not None else torch_dtype(cfg.train.precision),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return TunedRun(run_dir, cfg, trained.method, trained.folder, loaded.model, loaded.tokenizer)


def open_prepared(run_dir: Path) -> PreparedDataset:
    """The run's prepared dataset; raises DataError when `prepare` has not finished."""
    return load_prepared(RunFolder(run_dir).data_dir)


def write_training_summary(run_dir: Path, summary: dict) -> Path:
    """Write `training.json` atomically (reports and benchmarks read it later)."""
    path = RunFolder(run_dir).training_summary_file
    write_text_atomic(path, json.dumps(summary, indent=2))
    return path


def read_training_summary(run_dir: Path) -> dict | None:
    """The run's `training.json`, or None when the run has none (it was not trained by `run`)."""
    path = RunFolder(run_dir).training_summary_file
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path} is not valid JSON: {e}") from None


def save_trained(
    model, tokenizer, run_dir: Path, method: Method, state_dict: dict | None = None
) -> Path:
    """Save the adapter (LoRA) or the whole model as safetensors, atomically (temp folder, rename).

    `state_dict` overrides the model's own (FSDP: the gathered whole tensors)."""
    target = RunFolder(run_dir).trained_dir(method)
    with atomic_folder(target) as tmp:  # the last good one stays until the new one is in place
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return target
