"""A shipped recipe's own data as studio files, so the New job page can run a recipe as it is
shipped through the same path as every job (`POST /v1/fine_tuning/jobs` takes uploaded files
only).

The recipe's train and test files are read by the data stage's collector with the recipe's own
settings (format, column mapping, cleaning), written as chat JSONL and added with `add_file`,
which checks them as any upload is checked. The same content is stored once; the same recipe
data picked again reuses its file records.
"""

from __future__ import annotations

import hashlib
import json

from tunewright.config import load_config
from tunewright.data.collect import Collector
from tunewright.dataset.example import Example
from tunewright.serve.app import ApiError
from tunewright.studio.app import add_file
from tunewright.studio.protocol import RECIPE_KEY
from tunewright.studio.recipe import chosen_recipe
from tunewright.studio.state import Studio
from tunewright.studio.store import FileRecord

RECIPE_DATA = "recipe"  # the New job form's training-file value meaning "the recipe's own data"


def recipe_files(studio: Studio, name: str) -> tuple[FileRecord, FileRecord | None]:
    """The recipe's training data and (when it names test files) its test data, as files."""
    cfg = load_config(chosen_recipe({RECIPE_KEY: name}, studio.settings.recipes_dir), [])
    collector = Collector(cfg.data, strict=False)

    def as_file(paths: list[str], split: str) -> FileRecord:
        examples = collector.collect([cfg.resolve_path(p) for p in paths]).examples
        content = "".join(_chat_line(e) for e in examples if e.is_chat).encode()
        if not content:
            raise ApiError(400, f"the recipe '{name}' has no chat examples in its {split} data")
        sha256 = hashlib.sha256(content).hexdigest()
        filename = f"{name}-{split}.jsonl"
        for known in studio.store.files():
            if known.sha256 == sha256 and known.filename == filename:
                return known
        return add_file(studio, content, filename)

    training = as_file(cfg.data.train_files, "train")
    test = as_file(cfg.data.test_files, "test") if cfg.data.test_files else None
    return training, test


def _chat_line(example: Example) -> str:
    messages = [
        {"role": m.role, "content": m.content, **({} if m.weight is None else {"weight": m.weight})}
        for m in example.messages
    ]
    return json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
