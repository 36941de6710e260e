"""The command line: options generated from settings models reach those models."""

from __future__ import annotations

from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.serve.settings import ServeSettings


def _captured_serve_settings(monkeypatch, args: list[str], env: dict | None = None):
    import tunewright.serve.server as server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda sources, settings, **_: seen.update(s=settings))
    result = CliRunner().invoke(app, ["serve", "some-model", *args], env=env or {})
    assert result.exit_code == 0, result.output
    return seen["s"]


def test_every_serve_setting_is_a_cli_option():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    for name in ServeSettings.model_fields:
        assert "--" + name.replace("_", "-") in result.output


def test_serve_options_reach_the_settings(monkeypatch):
    settings = _captured_serve_settings(
        monkeypatch, ["--max-queue", "3", "--timeout", "7.5", "--default-max-tokens", "9"]
    )
    assert settings == ServeSettings(max_queue=3, request_timeout_s=7.5, default_max_tokens=9)


def test_serve_api_key_comes_from_the_environment(monkeypatch):
    settings = _captured_serve_settings(monkeypatch, [], env={"TUNEWRIGHT_API_KEY": "k1"})
    assert settings.api_key == "k1"
    assert _captured_serve_settings(monkeypatch, [], env={"TUNEWRIGHT_API_KEY": ""}).api_key is None
