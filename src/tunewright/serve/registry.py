"""What a server serves: one base model in memory and any number of LoRA adapters on it, each
selectable by the model name a client sends.

Sources are run folders (`runs/<name>`: a LoRA run adds its adapter under the run's name, a full
fine-tuning run is itself the base model), adapter folders (`NAME=PATH`), or a model name as
`tunewright.models.load_model` accepts it. The base model is always served too, under its own
name, so base and tuned answers can be compared side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tunewright.errors import TunewrightError
from tunewright.hardware import torch_dtype
from tunewright.inference.engine import Engine
from tunewright.models import load_model, resolve_model_folder
from tunewright.runs import ADAPTER_CONFIG, RunFolder, adapter_base_model, read_run_config


@dataclass(frozen=True)
class ServedModel:
    name: str  # what clients send as "model"
    adapter: str | None  # the peft adapter name; None = the base model
    system_prompt: str | None  # the run's system prompt, used when a chat has none
    source: str


@dataclass
class ModelSet:
    model: torch.nn.Module  # the base model, wrapped in a PeftModel when adapters are served
    tokenizer: PreTrainedTokenizerBase
    served: dict[str, ServedModel] = field(default_factory=dict)
    max_context: int = 2048  # the model's max_position_embeddings

    @property
    def has_adapters(self) -> bool:
        return any(m.adapter is not None for m in self.served.values())

    def chat_prompt_ids(self, served: ServedModel, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat rendered with the chat template, ready for the answer.

        A chat without a system message gets the run's system prompt: the model was tuned (and
        evaluated) with it, as an Ollama Modelfile's SYSTEM line does.
        """
        if served.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": served.system_prompt}, *messages]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class _Adapter:
    name: str
    path: Path
    base: str
    system_prompt: str | None


def load_models(
    sources: list[str], adapters: dict[str, str] | None = None, *, precision: str = "auto"
) -> ModelSet:
    """Load the base model once and attach every adapter; raises TunewrightError on conflicts."""
    if not sources:
        raise TunewrightError("name at least one model or run folder to serve")
    base_name: str | None = None
    base_served_as: str | None = None
    base_system: str | None = None
    found: list[_Adapter] = []
    for source in sources:
        path = Path(source).expanduser()
        run = RunFolder(path)
        if run.is_run():
            trained = run.trained()
            cfg = read_run_config(path)
            if trained.method == "lora":
                found.append(
                    _Adapter(cfg.name, trained.folder, cfg.model.name, cfg.data.system_prompt)
                )
                continue
            candidate, served_as = str(trained.folder), cfg.name
            base_system = cfg.data.system_prompt
        else:
            candidate, served_as = source, path.name if path.exists() else source
        if base_name is not None and base_name != candidate:
            raise TunewrightError(
                f"one server holds one base model: got both {base_name} and {candidate}"
            )
        base_name, base_served_as = candidate, served_as
    for name, folder in (adapters or {}).items():
        path = Path(folder).expanduser()
        if not (path / ADAPTER_CONFIG).is_file():
            raise TunewrightError(f"adapter {name}: {path} has no {ADAPTER_CONFIG}")
        found.append(_Adapter(name, path, adapter_base_model(path), None))
    if base_name is None:  # only adapters were named: serve their base
        base_name = found[0].base
        base_served_as = Path(base_name).name if Path(base_name).exists() else base_name
    resolved = resolve_model_folder(base_name)
    for adapter in found:
        if resolve_model_folder(adapter.base) != resolved:
            raise TunewrightError(
                f"adapter '{adapter.name}' was trained on {adapter.base}, not on the served base {base_name}"
            )
    loaded = load_model(base_name, dtype=torch_dtype(precision))  # tunewright.hardware decides
    served = {base_served_as: ServedModel(base_served_as, None, base_system, resolved)}
    model = loaded.model
    if found:
        from peft import PeftModel

        for i, adapter in enumerate(found):
            if adapter.name in served:
                raise TunewrightError(
                    f"two models are both named '{adapter.name}'; rename one (NAME=PATH)"
                )
            if i == 0:
                model = PeftModel.from_pretrained(model, adapter.path, adapter_name=adapter.name)
            else:
                model.load_adapter(adapter.path, adapter_name=adapter.name)
            served[adapter.name] = ServedModel(
                adapter.name, adapter.name, adapter.system_prompt, str(adapter.path)
            )
    model.eval()
    return ModelSet(model, loaded.tokenizer, served, int(model.config.max_position_embeddings))


def add_adapter(
    models: ModelSet, engine: Engine, name: str, folder: Path, system_prompt: str | None = None
) -> ServedModel:
    """Serve one more LoRA adapter on the running server (the studio, when a job succeeds).

    The adapter is loaded on the engine's worker thread between decoding steps (`Engine.call`),
    so no forward pass sees a half-loaded adapter; a base model served alone is wrapped in a
    PeftModel on the first one. `models.served` is replaced, not mutated, so a request reading
    it meanwhile sees the old or the new dict, never one changing under it.
    """
    if name in models.served:
        raise TunewrightError(f"a model named '{name}' is already served")
    base = next(m for m in models.served.values() if m.adapter is None)
    if resolve_model_folder(adapter_base_model(folder)) != base.source:
        raise TunewrightError(f"adapter '{name}' was not trained on the served base model")

    def load() -> None:
        from peft import PeftModel

        if isinstance(engine.model, PeftModel):
            engine.model.load_adapter(folder, adapter_name=name)
        else:
            engine.model = PeftModel.from_pretrained(engine.model, folder, adapter_name=name)
            engine.adapters = True
        engine.model.eval()
        models.model = engine.model

    engine.call(load)
    served = ServedModel(name, name, system_prompt, str(folder))
    models.served = {**models.served, name: served}
    return served
