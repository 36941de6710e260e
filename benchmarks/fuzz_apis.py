"""Fuzz `serve`'s and the studio's HTTP APIs from their OpenAPI schemas, and the data readers.

Run: python benchmarks/fuzz_apis.py [--api-cases 200] [--reader-cases 10000]

Both apps run on a free localhost port with the tiny random test model (tests/conftest.py), the
studio with a temporary home and an API key. Schemathesis generates requests for every operation
from the schema, both valid ones and ones that break it (negative mode); the check is that no
answer is a 5xx (bad client input must be a 4xx) and that the server survives. The routes parse
their JSON and multipart bodies themselves, so the schema is given their bodies here (the
pydantic request models) for the fuzzer to aim at. The data readers are then fed
tests/data/test_readers_fuzz.py's random bytes and rows, `--reader-cases` per reader test.
Prints cases run and every failure; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.conftest (tiny model) and tests.data (reader strategies)
KEY = "fuzz-key"


def _add_json_body(spec: dict, path: str, model) -> None:
    """Declare `model` as the JSON body of POST `path` (the route reads the body itself)."""
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(body.pop("$defs", {}))
    spec["paths"][path]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": body}},
    }


def _add_upload_body(spec: dict) -> None:
    spec["paths"]["/v1/files"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"},
                    },
                    "required": ["file", "purpose"],
                }
            }
        },
    }


def spec_with_bodies(url: str, *, studio: bool, key: str = KEY) -> dict:
    from tunewright.serve.protocol import ChatCompletionRequest, CompletionRequest

    spec = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
    _add_json_body(spec, "/v1/chat/completions", ChatCompletionRequest)
    _add_json_body(spec, "/v1/completions", CompletionRequest)
    if studio:
        from tunewright.studio.protocol import JobCreate

        _add_json_body(spec, "/v1/fine_tuning/jobs", JobCreate)
        _add_upload_body(spec)
    return spec


def fuzz_api(url: str, *, studio: bool, max_examples: int, key: str = KEY) -> dict:
    """Fuzz every operation of the app at `url`; returns {"cases", "statuses", "failures"}."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(spec_with_bodies(url, studio=studio, key=key))
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                try:
                    response = case.call(base_url=url, headers=headers, timeout=60)
                except Exception as e:  # the server closed the connection or hung: a crash
                    failures.append(f"{op.label} ({mode.value}): {type(e).__name__}: {e}")
                    return
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{op.label} ({mode.value}): {response.status_code} "
                        f"{response.text[:200]!r} for {case.as_curl_command()[:400]}"
                    )

            try:
                check()
            except Unsatisfiable:  # nothing to break: an operation without parameters
                pass
    if httpx.get(url + "/health").status_code != 200:
        failures.append("the server no longer answers /health")
    return {"cases": sum(statuses.values()), "statuses": dict(statuses), "failures": failures}


def fuzz_readers(cases: int) -> dict:
    """tests/data/test_readers_fuzz.py's bodies and strategies at `cases` examples per test."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.data import test_readers_fuzz as rf

    ran = Counter()
    failures: list[str] = []
    fuzz = settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    tests = {
        "random bytes": (
            rf.test_random_bytes_never_crash_a_reader,
            {"data": st.binary(max_size=300), "suffix": st.sampled_from(rf.SUFFIXES)},
        ),
        "random JSON rows": (
            rf.test_random_json_rows_are_examples_or_quarantined,
            {
                "values": st.lists(rf.rows | rf.json_values, max_size=5),
                "fmt": st.sampled_from(rf.FORMATS),
                "as_array": st.booleans(),
            },
        ),
        "random CSV cells": (
            rf.test_random_csv_cells_are_examples_or_quarantined,
            {"cells": st.lists(st.lists(st.text(max_size=15), min_size=1, max_size=4), max_size=5)},
        ),
    }

    def counting(name, body):
        def counted(**kwargs):
            ran[name] += 1
            body(**kwargs)

        return counted

    for name, (test, strategies) in tests.items():
        try:
            fuzz(given(**strategies)(counting(name, test.hypothesis.inner_test)))()
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:500]}")
    return {"cases": dict(ran), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-cases", type=int, default=200, help="examples per operation/mode")
    parser.add_argument("--reader-cases", type=int, default=10_000, help="examples per reader test")
    args = parser.parse_args()

    from tests.conftest import build_tiny_model
    from tunewright.serve.registry import load_models
    from tunewright.serve.server import start_server
    from tunewright.serve.settings import ServeSettings
    from tunewright.studio.server import start_studio
    from tunewright.studio.settings import StudioSettings

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-model")
        serve_settings = ServeSettings(port=0, api_key=KEY, max_tokens=16)
        server = start_server(load_models([str(model)]), serve_settings)
        try:
            report = fuzz_api(server.url, studio=False, max_examples=args.api_cases)
        finally:
            server.stop()
        failed |= _print("serve API", report)
        studio = start_studio(
            StudioSettings(
                port=0, home=Path(tmp) / "home", model=str(model), api_key=KEY, max_tokens=16
            )
        )
        try:
            report = fuzz_api(studio.url, studio=True, max_examples=args.api_cases)
        finally:
            studio.stop()
        failed |= _print("studio API", report)
    if args.reader_cases:
        failed |= _print("data readers", fuzz_readers(args.reader_cases))
    sys.exit(1 if failed else 0)


def _print(what: str, report: dict) -> bool:
    print(f"{what}: cases {report['cases']}", end="")
    if "statuses" in report:
        print(f", statuses {dict(sorted(report['statuses'].items()))}", end="")
    print(f", failures {len(report['failures'])}")
    for f in report["failures"][:50]:
        print("  FAIL", f)
    return bool(report["failures"])


if __name__ == "__main__":
    main()
