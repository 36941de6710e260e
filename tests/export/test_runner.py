"""Every export format on the tiny trained run: exactly the expected files, reloadable by the
tools users run, and proved to be the same model by the parity check."""

import json

import pytest
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.export.runs import full_run_from
from tunewright.dataset.prepared import load_prepared
from tunewright.export.publish import ExportError
from tunewright.export.runner import export

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    results = export(
        tiny_run,
        ["adapter", "merged", "gguf"],
        quants=["f16", "bf16", "q8_0"],
        output_dir=out,
        console=QUIET,
    )
    return out, {r.artifact: r for r in results}


def test_each_format_writes_exactly_the_expected_files(exported, tiny_run):
    out, results = exported
    assert sorted(results) == ["adapter", "gguf-bf16", "gguf-f16", "gguf-q8_0", "merged"]
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    expected = {
        "adapter": {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        | tokenizer_files,
        "merged": {"config.json", "generation_config.json", "model.safetensors"} | tokenizer_files,
        **{f"gguf-{q}": {f"tiny-run-{q}.gguf", "Modelfile"} for q in ("f16", "bf16", "q8_0")},
    }
    for artifact, files in expected.items():
        present = {p.name for p in (out / artifact).iterdir()}
        assert present == files | {"export.json", "parity.json"}, artifact
        assert json.loads((out / artifact / "export.json").read_text())["run_dir"] == str(
            tiny_run.resolve()
        )
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_parity_figures_are_stored_in_the_run_folder_and_pass(exported, tiny_run):
    stored = json.loads((tiny_run / "export" / "parity.json").read_text())
    n_test = len(load_prepared(tiny_run / "data").test)
    assert set(stored) == {"adapter", "merged", "gguf-f16", "gguf-bf16", "gguf-q8_0"}
    for artifact, report in stored.items():
        assert (
            report["passed"]
            and report["prompts"] == n_test
            and report["tokenizer_agreement"] == 1.0
        ), artifact
        assert report["prompt_source"].endswith("data (test split)")
    assert (
        stored["adapter"]["max_logit_diff"] == 0.0
    )  # the same files on the same base: bit-identical
    assert stored["merged"]["max_logit_diff"] < 1e-3  # W + BA vs Wx + BAx: rounding only
    # fp16 rounds each weight to 11 bits, q8_0 to 8 bits per 32-weight block: larger, bounded
    assert stored["gguf-f16"]["max_logit_diff"] < stored["gguf-q8_0"]["max_logit_diff"] < 5.0
    assert (
        stored["gguf-f16"]["greedy_agreement"] >= 0.99
        and stored["gguf-q8_0"]["greedy_agreement"] >= 0.95
    )


def test_merged_folder_loads_with_plain_transformers(exported):
    out, _ = exported
    model = AutoModelForCausalLM.from_pretrained(out / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id  # generation stops at end of turn
    assert tokenizer.chat_template and not any("lora" in k for k in model.state_dict())


def test_modelfile_names_the_gguf_template_system_prompt_and_stop(exported):
    out, _ = exported
    text = (out / "gguf-q8_0" / "Modelfile").read_text()
    assert "FROM ./tiny-run-q8_0.gguf" in text
    assert 'SYSTEM """Name the intent."""' in text
    assert "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_exporting_again_replaces_the_runs_own_export(tiny_run, tmp_path):
    first = export(tiny_run, ["gguf"], quants=["f16"], output_dir=tmp_path, console=QUIET)[0]
    stamp = json.loads((first.folder / "export.json").read_text())["created"]
    again = export(tiny_run, ["gguf"], quants=["f16"], output_dir=tmp_path, console=QUIET)[0]
    assert json.loads((again.folder / "export.json").read_text())["created"] > stamp


def test_never_overwrites_another_runs_files(tiny_run, tiny_model_dir, tmp_path):
    export(tiny_run, ["merged"], output_dir=tmp_path, console=QUIET)
    other = full_run_from(tiny_model_dir, tmp_path / "runs" / "other")
    with pytest.raises(ExportError, match="another run"):
        export(other, ["merged"], output_dir=tmp_path, console=QUIET)
    assert json.loads((tmp_path / "merged" / "export.json").read_text())["run_dir"] == str(
        tiny_run.resolve()
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "merged").mkdir()
    (tmp_path / "mine" / "merged" / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not a tunewright export"):
        export(other, ["merged"], output_dir=tmp_path / "mine", console=QUIET)
    assert (tmp_path / "mine" / "merged" / "notes.txt").read_text() == "precious"


def test_full_finetuning_run_has_no_adapter_but_exports_gguf(tiny_model_dir, tmp_path):
    run = full_run_from(tiny_model_dir, tmp_path / "runs" / "full")
    with pytest.raises(ExportError, match="fully fine-tuned"):
        export(run, ["adapter"], console=QUIET)
    # an untrained random model has near-flat logits: only the lossless formats are sure to agree
    merged, gguf = export(run, ["merged", "gguf"], quants=["f16"], console=QUIET)
    assert (
        merged.parity.passed
        and gguf.parity.passed
        and gguf.parity.prompt_source == "built-in questions"
    )


def test_a_writer_that_is_not_the_loaders_inverse_is_caught(tiny_run, tmp_path, monkeypatch):
    """Skip llama.cpp's q/k permutation: the file still loads, but the parity check refuses it."""
    from tunewright.export import gguf_file

    monkeypatch.setattr(gguf_file, "_permute", lambda weights, n_head: weights)
    with pytest.raises(ExportError, match=r"gguf-f16 agrees on .* of greedy answers"):
        export(tiny_run, ["gguf"], quants=["f16"], output_dir=tmp_path, console=QUIET)
    assert not (tmp_path / "gguf-f16").exists(), "a failed export must not be published"
    report = json.loads((tiny_run / "export" / "parity.json").read_text())["gguf-f16"]
    assert not report["passed"] and report["max_logit_diff"] > 0.5 and report["disagreements"]


def test_unknown_format_is_refused_before_any_work(tiny_run):
    with pytest.raises(ExportError, match="unknown export format"):
        export(tiny_run, ["onnx"], console=QUIET)


def test_cli_export_prints_parity_and_the_folder(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from tunewright.cli import app

    result = CliRunner().invoke(
        app,
        [
            "export",
            str(tiny_run),
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "--output-dir",
            str(tmp_path),
            "--parity-prompts",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "gguf-q8_0: max logit diff" in result.output
        and "on 4 prompts" in result.output
        and "[ok]" in result.output
    )
    assert (tmp_path / "gguf-q8_0" / "tiny-run-q8_0.gguf").is_file()
