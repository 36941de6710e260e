"""The fine-tuning jobs API's wire format: the create request as pydantic models (unknown
hyperparameters are refused, not ignored) and the OpenAI object shapes of files, jobs and
checkpoints."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunewright.studio.store import FileRecord, JobRecord

OVERRIDES_KEY = "tunewright_overrides"  # metadata key holding recipe overrides (see recipe.py)
RECIPE_KEY = "tunewright_recipe"  # metadata key naming the shipped recipe a job starts from
_SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    n_epochs: int | Literal["auto"] = Field("auto", description="Passes over the training file.")
    batch_size: int | Literal["auto"] = Field("auto", description="Examples per optimiser step.")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="Multiplies the recipe's learning rate (train.lr)."
    )

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, v):
        if v != "auto" and not v > 0:
            raise ValueError("must be above 0")
        return v


class Supervised(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoHyperparameters(Hyperparameters):
    beta: float | Literal["auto"] = Field(
        "auto", description="DPO's temperature (train.beta): higher keeps closer to the start."
    )

    @field_validator("beta")
    @classmethod
    def _positive_beta(cls, v):
        if v != "auto" and not v > 0:
            raise ValueError("must be above 0")
        return v


class Dpo(_Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Strict):
    """`supervised` trains on chat examples; `dpo` on preference pairs in OpenAI's DPO format
    (`input`, `preferred_output`, `non_preferred_output`), as `train.objective: dpo`."""

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    def chosen(self) -> Hyperparameters:
        settings = self.dpo if self.type == "dpo" else self.supervised
        if settings is None:
            return DpoHyperparameters() if self.type == "dpo" else Hyperparameters()
        return settings.hyperparameters


class JobCreate(BaseModel):
    # extra keys OpenAI's client may send (integrations) are ignored; what we cannot honour is refused
    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # the older, deprecated place for them
    metadata: dict[str, str] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v is not None and not _SUFFIX.fullmatch(v):
            raise ValueError("use 1 to 64 letters, digits, '-' or '_'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None and (
            len(v) > 16 or any(len(k) > 64 or len(val) > 512 for k, val in v.items())
        ):
            raise ValueError("at most 16 keys of up to 64 characters, values up to 512")
        return v

    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.chosen()
        return self.hyperparameters or Hyperparameters()

    @property
    def method_type(self) -> str:
        return self.method.type if self.method is not None else "supervised"


def file_object(f: FileRecord) -> dict:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def job_object(job: JobRecord) -> dict:
    hyper = job.request["hyperparameters"]  # as resolved at creation (no "auto" left)
    method = job.request.get("method", "supervised")
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": job.created_at,
        "status": job.status,
        "model": job.model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": job.finished_at,
        "estimated_finish": job.estimated_finish if job.status == "running" else None,
        "error": job.error,
        "hyperparameters": hyper,
        "method": {"type": method, method: {"hyperparameters": hyper}},
        "organization_id": "tunewright",
        "result_files": [],
        "seed": job.seed,
        "trained_tokens": job.trained_tokens,
        "integrations": [],
        "metadata": job.request.get("metadata"),
        "suffix": job.suffix,
    }


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more}
