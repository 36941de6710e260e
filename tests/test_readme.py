"""The README is a manual that works: its own-data example runs as written (on the tiny model), and
every command, option and recipe key it shows exists; links into docs/results.md land on an anchor.

Blocks the README marks with `<!-- readme-test: NAME -->` are the example: `tickets.csv`,
`my-recipe.yaml`, `chats.jsonl` are written to files of those names, and each line of `commands`
is run through the CLI with overrides that swap in the tiny model and keep it fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from pydantic import BaseModel

from tunewright.cli import app
from tunewright.config import RunConfig, load_config
from tunewright.errors import ConfigError

README = Path(__file__).parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
MARKED = re.compile(
    r"<!-- readme-test: (?P<name>[\w.-]+) -->\n```\w*\n(?P<body>.*?)^```", re.S | re.M
)
FENCED = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
# `tunewright CMD ...` and `-m tunewright.cli CMD ...`, not `tunewright[judge]` or a path
COMMAND = re.compile(r"(?<![\w/.-])tunewright(?:\.cli)? +(?P<name>[a-z][a-z-]*)(?P<rest>[^`#\n]*)")
DOTTED_KEY = re.compile(r"(?<![\w/.-])(?:model|data|train|evaluate)(?:\.[a-z_]+)+")
# The README's example of a misspelt key: it must be rejected, not exist.
TYPO = "train.learning_rate"


def marked_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in MARKED.finditer(TEXT)}


def code_texts() -> list[str]:
    """Every fenced block and every inline code span of the README."""
    blocks = [m["body"] for m in FENCED.finditer(TEXT)]
    prose = FENCED.sub("", TEXT)
    return blocks + re.findall(r"`([^`]+)`", prose)


def _cli_group():
    return typer.main.get_command(app)


def shown_commands() -> list[tuple[str, list[str]]]:
    """(command path, options) for every tunewright command shown, e.g. ('data inspect', [])."""
    group = _cli_group()
    found = []
    for text in code_texts():
        for m in COMMAND.finditer(text):
            name, rest = m["name"], m["rest"]
            if name in group.commands and isinstance(group.commands[name], typer.core.TyperGroup):
                sub, _, rest = rest.strip().partition(" ")
                name = f"{name} {sub}"
            found.append((name, re.findall(r"(?<!\S)(--?[a-z][\w-]*)", rest)))
    return found


def test_the_example_is_marked():
    assert set(marked_blocks()) == {"tickets.csv", "my-recipe.yaml", "commands", "chats.jsonl"}


def test_every_command_shown_is_a_real_command_with_real_options():
    shown = shown_commands()
    assert {"prepare", "data inspect", "train", "evaluate", "run", "export", "serve", "chat"} <= {
        name for name, _ in shown
    }
    env = {**os.environ, "COLUMNS": "200"}
    helps = {
        group: subprocess.run(
            [sys.executable, "-m", "tunewright.cli", *group, "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        for group in ((), ("data",))
    }
    cli = _cli_group()
    for name, options in shown:
        *group, command = name.split()
        assert re.search(rf"\b{command}\b", helps[tuple(group)]), f"`tunewright {name}` not listed"
        node = cli
        for part in name.split():
            node = node.commands[part]
        known = {opt for param in node.params for opt in (*param.opts, *param.secondary_opts)}
        unknown = set(options) - known - {"--help"}
        assert not unknown, f"`tunewright {name}` has no option {sorted(unknown)}"


def _is_config_key(dotted: str) -> bool:
    model: type[BaseModel] | None = RunConfig
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_section else None
    return True


def test_every_recipe_key_shown_is_a_config_key():
    keys = {k for text in code_texts() for k in DOTTED_KEY.findall(text)} - {TYPO}
    assert not [k for k in sorted(keys) if not _is_config_key(k)]
    assert {"train.max_minutes", "train.fsdp", "evaluate.models"} <= keys  # the check sees them
    with pytest.raises(ConfigError, match="learning_rate: unknown key"):
        load_config(None, [f"{TYPO}=1e-3"])


def test_every_yaml_block_validates():
    blocks = [m["body"] for m in FENCED.finditer(TEXT) if m["lang"] == "yaml"]
    assert len(blocks) >= 2
    for body in blocks:
        RunConfig.model_validate(yaml.safe_load(body))


def _tunewright(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TUNEWRIGHT_CACHE": str(cwd / "cache"),
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "tunewright.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def example(tmp_path) -> Path:
    """The README's example files, written where its commands expect them."""
    for name, body in marked_blocks().items():
        if name != "commands":
            (tmp_path / name).write_text(body, encoding="utf-8")
    return tmp_path


def _fast(tiny_model_dir: Path) -> list[str]:
    return [
        f"model.name={tiny_model_dir}",
        "train.max_steps=2",
        "evaluate.general_check=false",
        "evaluate.models=[base_0shot,tuned]",
    ]


@pytest.mark.slow
def test_own_data_example_runs_as_written(example, tiny_model_dir):
    lines = [line.split("#")[0].strip() for line in marked_blocks()["commands"].splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert [c[:2] for c in commands] == [["tunewright", "data"], ["tunewright", "run"]]
    for command in commands:
        done = _tunewright([*command[1:], *_fast(tiny_model_dir)], example)
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stdout}\n{done.stderr}"

    run_dir = load_config(example / "my-recipe.yaml").run_dir
    report = f"{run_dir}/report.html"
    assert f"`{report}`" in TEXT, "the README says where the report is"
    assert f"report: {report}" in done.stdout
    for name in ("report.html", "report.md", "eval/results.json", "eval/examples.jsonl"):
        assert (example / run_dir / name).is_file(), name
    results = json.loads((example / run_dir / "eval" / "results.json").read_text())
    assert results["task"] == "classification"
    assert set(results["models"]) == {"base_0shot", "tuned"}


def test_chat_example_prepares_without_bad_rows(example, tiny_model_dir):
    done = _tunewright(
        [
            "prepare",
            "my-recipe.yaml",
            f"model.name={tiny_model_dir}",
            "data.train_files=[chats.jsonl]",
            "data.test_files=[chats.jsonl]",
            "data.split=random",
        ],
        example,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = load_config(example / "my-recipe.yaml").run_dir
    summary = json.loads((example / run_dir / "data" / "summary.json").read_text())
    rows = len(marked_blocks()["chats.jsonl"].splitlines())
    assert summary["quarantined"] == 0
    assert summary["splits"]["test"] == rows and summary["splits"]["train"] == rows


RESULTS = README.parent / "docs" / "results.md"
# Code comments point at these (docs/results.md#NAME) instead of quoting numbers: keep them.
STABLE_ANCHORS = {
    "training-throughput",
    "time-budget",
    "shared-prefix",
    "general-replay",
    "label-weighting",
    "finance-variants",
    "banking77-uplift",
    "pubmedqa",
    "medquad",
}


def test_links_to_results_land_on_an_anchor():
    results = RESULTS.read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', results))
    assert STABLE_ANCHORS <= anchors
    linked = re.findall(r"\(docs/results\.md#([\w-]+)\)", TEXT)
    linked += re.findall(r"\]\(#([\w-]+)\)", results)
    assert linked and set(linked) <= anchors
