"""Server settings: one pydantic model, every field documented once; `tunewright serve`'s options
are generated from it (cli.py), so a new setting needs no CLI code."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        "127.0.0.1", description="Address to bind; anything but loopback needs an API key."
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_key: str | None = Field(
        None,
        description="Bearer key every route except /health requires (env TUNEWRIGHT_API_KEY).",
        json_schema_extra={"env": "TUNEWRIGHT_API_KEY"},
    )
    max_tokens: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens of a chat request that sets none."
    )
    max_n: int = Field(4, ge=1, description="Largest n (answers per prompt) a request may ask for.")
    max_prompts: int = Field(16, ge=1, description="Most prompts in one /v1/completions request.")
    max_prompt_tokens: int = Field(
        4096, ge=1, description="Longest prompt, in tokens, after the chat template."
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body, in bytes.")
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds after which a request still unanswered fails.",
        json_schema_extra={"flags": ["--timeout"]},
    )
    max_batch_size: int = Field(
        16, ge=1, description="Most sequences decoded together in one forward pass."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Weights' precision; auto: bf16 where this machine runs it fast."
    )
    max_queue: int = Field(
        256, ge=1, description="Most requests waiting; beyond it the server answers 503."
    )
