"""A studio on a free localhost port, fine-tuning the tiny test model, and chat JSONL to upload."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from openai import OpenAI

from tunewright.studio.server import start_studio
from tunewright.studio.settings import StudioSettings

FIXTURES = Path(__file__).parent.parent / "fixtures"
SYSTEM = "Name the intent."
# Recipe overrides (metadata["tunewright_overrides"]) that keep a job on the tiny model to seconds.
FAST = (
    "train.max_steps=4 train.lora_r=8 train.lr=0.02 train.lr_warmup_steps=1 "
    "train.log_every_steps=1 train.checkpoint_every_steps=2 train.report_to=[] data.max_seq_len=64 "
    "evaluate.models=[tuned] evaluate.general_check=false evaluate.max_new_tokens=4"
)
KEY = "studio-test-key"


def chat_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="session")
def intents_jsonl() -> bytes:
    """The intents fixture as OpenAI chat JSONL."""
    with (FIXTURES / "intents_train.csv").open() as f:
        rows = [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": r["text"]},
                    {"role": "assistant", "content": r["category"]},
                ]
            }
            for r in csv.DictReader(f)
        ]
    return chat_jsonl(rows)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model_dir):
    running = start_studio(
        StudioSettings(
            port=0, home=tmp_path_factory.mktemp("studio"), model=str(tiny_model_dir), api_key=KEY
        )
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(studio):
    return OpenAI(base_url=studio.url + "/v1", api_key=KEY, max_retries=0)
