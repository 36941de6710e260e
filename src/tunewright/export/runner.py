"""Export: the tuned model of a run folder as an adapter, a merged Hugging Face folder or GGUF
files, each proved to be the same model by a parity check before it is published.

Front door: `export(run_dir, formats, quants=...)`. For each artifact: write into a temporary
folder, reload what was written (peft for the adapter, transformers for merged and GGUF), compare
it with the tuned model in memory on the run's test prompts, store the figures, and only then
rename the folder into place. An artifact that misses its agreement threshold is not published
and the export fails, naming it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape

from tunewright.export.adapter import load_adapter, write_adapter
from tunewright.export.gguf_file import QUANTS, GGUFQuant, check_supported, load_gguf, write_gguf
from tunewright.export.merged import load_merged, merged_copy, write_merged
from tunewright.export.modelfile import modelfile
from tunewright.export.parity import (
    MIN_GREEDY_AGREEMENT,
    ParityReport,
    Reference,
    check_parity,
    load_parity_prompts,
)
from tunewright.export.publish import ExportError, staged_folder, write_manifest
from tunewright.files import write_json_atomic
from tunewright.hardware import REFERENCE_DTYPE
from tunewright.runs import RunFolder, TunedRun, load_tuned

ExportFormat = Literal["adapter", "merged", "gguf"]
FORMATS: tuple[ExportFormat, ...] = ("adapter", "merged", "gguf")
PARITY_FILE = "parity.json"


@dataclass
class ExportResult:
    artifact: str  # adapter, merged, gguf-f16, gguf-bf16, gguf-q8_0
    folder: Path | None  # None when the parity check failed and nothing was published
    files: list[str]
    parity: ParityReport
    notes: list[str]
    seconds: float


def export(
    run_dir: str | Path,
    formats: list[ExportFormat] | tuple[ExportFormat, ...] = ("merged",),
    *,
    quants: list[GGUFQuant] | tuple[GGUFQuant, ...] = ("q8_0",),
    output_dir: str | Path | None = None,
    parity_prompts: int | None = 100,
    console: Console | None = None,
) -> list[ExportResult]:
    """Export a run's tuned model in each of `formats` (GGUF once per quant in `quants`).

    Artifacts go to `output_dir` (default `<run>/export/`) as `adapter/`, `merged/` and
    `gguf-<quant>/`. Parity figures are printed and stored in `<run>/export/parity.json` and in
    each artifact folder. `parity_prompts` caps how many test prompts are compared (None: all).
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    unknown = [f for f in formats if f not in FORMATS] + [q for q in quants if q not in QUANTS]
    if unknown:
        raise ExportError(
            f"unknown export format or quantisation {unknown}; choose from {FORMATS} and {QUANTS}"
        )
    # every artifact is compared with the tuned model in fp32, so the reference adds no rounding
    tuned = load_tuned(run_dir, dtype=REFERENCE_DTYPE)
    out = Path(output_dir) if output_dir is not None else RunFolder(run_dir).export_dir
    artifacts = [(f, None) for f in formats if f != "gguf"] + [
        ("gguf", q) for q in quants if "gguf" in formats
    ]
    merged = merged_copy(tuned) if any(f != "adapter" for f, _ in artifacts) else None
    if "gguf" in formats:
        check_supported(merged)  # refuse before any work is done
    prompts = load_parity_prompts(
        run_dir, tuned.cfg.data.system_prompt, tuned.cfg.evaluate.max_new_tokens, parity_prompts
    )
    reference = Reference(tuned.model, tuned.tokenizer, prompts)
    console.print(f"parity prompts: {len(prompts.conversations)} from {prompts.source}")

    results, failed = [], []
    for fmt, quant in artifacts:
        artifact = fmt if quant is None else f"gguf-{quant}"
        started = time.perf_counter()
        with console.status(f"export {artifact}"):
            result = _export_one(tuned, merged, reference, fmt, quant, out / artifact)
        result.seconds = time.perf_counter() - started
        _store_parity(run_dir, result.parity)
        colour = "green" if result.parity.passed else "red"
        console.print(f"[{colour}]{escape(result.parity.summary())}[/]", highlight=False)
        for note in result.notes:
            console.print(f"  note: {note}", highlight=False)
        if result.parity.passed:
            console.print(f"  wrote {result.folder} ({result.seconds:.0f} s)", highlight=False)
            results.append(result)
        else:
            failed.append(result.parity)
    if failed:
        raise ExportError(
            "not published, parity check failed: "
            + "; ".join(
                f"{p.artifact} agrees on {p.greedy_agreement:.1%} of greedy answers (needs "
                f"{p.min_greedy_agreement:.0%})"
                for p in failed
            )
            + f". Figures and disagreeing answers: {RunFolder(run_dir).export_dir / PARITY_FILE}"
        )
    return results


def _export_one(
    tuned: TunedRun, merged, reference: Reference, fmt: str, quant: str | None, target: Path
) -> ExportResult:
    """Write one artifact into a staged folder, check its parity, and publish it if it passes."""
    artifact = target.name
    try:
        with staged_folder(target, tuned.run_dir) as tmp:
            if fmt == "adapter":
                notes = write_adapter(tuned, tmp)
                model, tokenizer = load_adapter(tuned, tmp)
            elif fmt == "merged":
                notes = write_merged(merged, tuned.tokenizer, tmp)
                model, tokenizer = load_merged(tmp)
            else:
                filename = f"{tuned.cfg.name}-{quant}.gguf"
                counts = write_gguf(merged, tuned.tokenizer, tmp / filename, quant, tuned.cfg.name)
                (tmp / "Modelfile").write_text(
                    modelfile(filename, tuned.tokenizer, tuned.cfg.data.system_prompt)
                )
                notes = [f"tensor types: {counts}"]
                model, tokenizer = load_gguf(tmp, filename)
            parity = check_parity(
                reference,
                model,
                tokenizer,
                artifact=artifact,
                base_model=tuned.cfg.model.name,
                min_greedy_agreement=MIN_GREEDY_AGREEMENT[quant or fmt],
            )
            del model
            write_json_atomic(tmp / PARITY_FILE, parity.to_json())
            if not parity.passed:
                raise _NotPublished  # the staged folder is discarded; the target stays as it was
            write_manifest(
                tmp, tuned.run_dir, artifact, base_model=tuned.cfg.model.name, method=tuned.method
            )
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    except _NotPublished:
        return ExportResult(artifact, None, [], parity, notes, 0.0)
    return ExportResult(artifact, target, files, parity, notes, 0.0)


class _NotPublished(Exception):
    """Raised inside a staged folder to discard it."""


def _store_parity(run_dir: Path, report: ParityReport) -> None:
    """Add one artifact's figures to `<run>/export/parity.json` (rewritten atomically)."""
    path = RunFolder(run_dir).export_dir / PARITY_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[report.artifact] = report.to_json()
    write_json_atomic(path, stored)
