"""A short run of benchmarks/fuzz_apis.py against the studio (serve's routes included): schema-made
requests, valid and broken, never get a 5xx and never bring the server down."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.studio.conftest import KEY

_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fuzz_apis.py"


def _fuzz_apis():
    spec = importlib.util.spec_from_file_location("fuzz_apis", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_fuzzing_finds_no_server_error(studio):
    report = _fuzz_apis().fuzz_api(studio.url, studio=True, max_examples=10, key=KEY)
    assert report["failures"] == []
    # every operation was reached, each with valid and broken requests
    assert report["cases"] >= 40
    assert any(400 <= s < 500 for s in report["statuses"])
