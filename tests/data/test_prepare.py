"""`prepare` end to end on the tiny model's tokenizer: the dataset folder, accounting, manifest,
PII, deduplication, leakage, token limits and chunking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tunewright.config import RunConfig
from tunewright.data.prepare import prepare
from tunewright.dataset.prepared import load_prepared
from tunewright.errors import DataError

FIXTURES = Path(__file__).parents[1] / "fixtures"
QUIET = Console(quiet=True)


def config(tmp_path: Path, model: Path, name: str = "run", **data) -> RunConfig:
    data = {
        "train_files": [str(FIXTURES / "intents_train.csv")],
        "test_files": [str(FIXTURES / "intents_test.csv")],
        "columns": {"label": "category"},
        "system_prompt": "Name the intent.",
        "val_fraction": 0.1,
        "max_seq_len": 64,
        **data,
    }
    return RunConfig.model_validate(
        {"name": name, "output_dir": str(tmp_path), "model": {"name": str(model)}, "data": data}
    )


def balance(summary: dict) -> None:
    rows_in = summary["rows_read"] + summary["chunks_added"]
    rows_out = (summary["quarantined"] + summary["duplicates_removed"] + summary["not_used_after_sampling"]
                + sum(summary["splits"].values()))  # fmt: skip
    assert rows_in == rows_out, summary


def test_dataset_folder_is_complete_accounted_and_reproducible(tmp_path, tiny_model_dir):
    first = prepare(config(tmp_path, tiny_model_dir, "a"), console=QUIET)
    files = {p.name for p in first.folder.iterdir()}
    assert files == {
        "train.parquet", "val.parquet", "test.parquet", "quarantine.jsonl", "duplicates.jsonl",
        "manifest.json", "summary.json", "card.md", "length_histogram.png",
    }  # fmt: skip
    summary = first.summary
    balance(summary)
    assert summary["splits"] == {"train": 40, "val": 4, "test": 16}
    assert summary["labels"] == [
        "card_arrival",
        "exchange_rate",
        "lost_or_stolen_card",
        "top_up_failed",
    ]
    tokens = summary["tokens"]["splits"]["train"]
    assert tokens["examples"] == 40 and 0 < tokens["trained_tokens"] < tokens["tokens"]
    assert "Where every row went" in (first.folder / "card.md").read_text()

    again = prepare(config(tmp_path, tiny_model_dir, "b"), console=QUIET)
    manifest_a = json.loads((first.folder / "manifest.json").read_text())
    manifest_b = json.loads((again.folder / "manifest.json").read_text())
    assert manifest_a["hash"] == manifest_b["hash"]
    changed = prepare(config(tmp_path, tiny_model_dir, "c", seed=1), console=QUIET)
    assert changed.summary["manifest_hash"] != manifest_a["hash"]

    loaded = load_prepared(first.folder)
    assert (loaded.train, loaded.val, loaded.test, loaded.labels) == (
        first.train,
        first.val,
        first.test,
        first.labels,
    )


def test_pii_is_redacted_and_counted(tmp_path, tiny_model_dir):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"mail me at user{i}@example.com or call (555) 234-567{i}"},
                      {"role": "assistant", "content": "noted"}]}
        for i in range(6)
    ]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(data)], test_files=[], columns={},
                 pii_redact=["EMAIL", "PHONE"], test_fraction=0.2, val_fraction=0.0, max_seq_len=256)  # fmt: skip
    dataset = prepare(cfg, console=QUIET)
    texts = [e.messages[0].content for e in dataset.train + dataset.test]
    assert texts and all(t == "mail me at [EMAIL] or call [PHONE]" for t in texts)
    assert dataset.summary["pii"]["redacted"] == {"EMAIL": 6, "PHONE": 6}


def test_near_duplicates_are_removed_and_clustered(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, dedup="near")
    dataset = prepare(cfg, console=QUIET)
    summary = dataset.summary
    balance(summary)
    assert summary["duplicates_removed"] > 0
    assert summary["duplicates_removed"] == sum(summary["duplicates"]["found"].values())
    assert summary["leakage"]["val"] == summary["leakage"]["test"] == 0
    clusters = [
        json.loads(line) for line in (dataset.folder / "duplicates.jsonl").read_text().splitlines()
    ]
    assert sum(len(c["duplicates"]) for c in clusters) == summary["duplicates_removed"]
    # held-out test rows are read first: a training row that repeats one is what goes
    assert all(not c["kept"].startswith(str(FIXTURES / "intents_train.csv")) or
               all("intents_train" in d["source"] for d in c["duplicates"]) for c in clusters)  # fmt: skip


def test_report_mode_keeps_duplicates_and_reports_leakage(tmp_path, tiny_model_dir):
    dataset = prepare(config(tmp_path, tiny_model_dir), console=QUIET)  # dedup: report (default)
    assert dataset.summary["duplicates_removed"] == 0
    assert dataset.summary["leakage"]["test"] > 0  # the fixture's test rows rephrase train rows
    leak = dataset.summary["leakage"]["examples"][0]
    assert "intents_test.csv" in leak["source"] and "intents_train.csv" in leak["train_source"]


def test_over_length_rows_are_quarantined_and_replaced(tmp_path, tiny_model_dir):
    data = tmp_path / "chat.jsonl"
    short = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    long = {
        "messages": [
            {"role": "user", "content": "card " * 200},
            {"role": "assistant", "content": "x"},
        ]
    }
    data.write_text("".join(json.dumps(r) + "\n" for r in [long, short, short, long, short]))
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(data)], test_files=[], columns={}, dedup="off",
                 test_fraction=0.2, val_fraction=0.0)  # fmt: skip
    dataset = prepare(cfg, console=QUIET)
    balance(dataset.summary)
    assert dataset.summary["quarantined_by_reason"] == {"over the token limit": 2}
    quarantine = [
        json.loads(x) for x in (dataset.folder / "quarantine.jsonl").read_text().splitlines()
    ]
    assert {q["location"] for q in quarantine} == {f"{data}:1", f"{data}:4"}
    assert all("over data.max_seq_len=64" in q["reason"] for q in quarantine)
    with pytest.raises(DataError, match="over data.max_seq_len=64 .*strict mode"):
        prepare(cfg, console=QUIET, strict=True)


def test_long_documents_are_cut_into_pieces_not_truncated(tmp_path, tiny_model_dir):
    doc = tmp_path / "handbook.txt"
    sentences = [
        f"My card number {i} has not arrived yet, and the exchange rate is fair." for i in range(30)
    ]
    doc.write_text(" ".join(sentences) + "\n")
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(doc)], test_files=[], columns={},
                 test_fraction=0.1, val_fraction=0.0)  # fmt: skip
    dataset = prepare(cfg, console=QUIET)
    balance(dataset.summary)
    pieces = sorted(dataset.train + dataset.test, key=lambda e: int(e.source.rsplit("#", 1)[1]))
    assert len(pieces) == dataset.summary["chunks_added"] + 1 > 3
    assert "".join(p.text for p in pieces).replace(" ", "") == " ".join(sentences).replace(" ", "")
    assert dataset.summary["tokens"]["splits"]["train"]["max_length"] <= 64


def test_no_usable_rows_names_the_first_problem(tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": "nope"}\n')
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(data)], test_files=[], columns={})
    with pytest.raises(
        DataError, match=r"no usable training rows: first problem: .*bad.jsonl:1: field 'messages'"
    ):
        prepare(cfg, console=QUIET)


def test_worker_processes_give_the_same_dataset_as_one_process(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tunewright.data import batches

    data = tmp_path / "chat.jsonl"
    lines = []
    for i in range(400):
        question = (
            f"question {i % 150} about card {'fees' if i % 7 else 'limits'} mail{i}@example.com"
        )
        lines.append(json.dumps({"messages": [{"role": "user", "content": question},
                                              {"role": "assistant", "content": f"answer {i % 150}"}]}))  # fmt: skip
        if i % 50 == 7:
            lines += ['{"messages": [{"role": "user", "content": "broken', "", '{"messages": []}']
    data.write_text("\n".join(lines))  # no final newline: the last block is a partial line
    monkeypatch.setattr(batches, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(batches, "BLOCK_BYTES", 2_000)
    prepared = {}
    for workers in (1, 2):
        monkeypatch.setattr(batches, "WORKERS", workers)
        cfg = config(tmp_path, tiny_model_dir, f"w{workers}", train_files=[str(data)], test_files=[], columns={},
                     pii_redact=["EMAIL"], dedup="near", max_seq_len=256)  # fmt: skip
        prepared[workers] = prepare(cfg, console=QUIET)
    one, two = prepared[1], prepared[2]
    assert one.summary == two.summary
    balance(two.summary)
    assert two.summary["quarantined_by_reason"] == {"broken JSON": 8, "empty content": 8}
    assert two.summary["duplicates"]["found"]["exact"] > 0
    assert two.summary["sources"][0]["rows"] == 400 + 16
    manifests = [json.loads((d.folder / "manifest.json").read_text()) for d in (one, two)]
    assert manifests[0]["outputs"] == manifests[1]["outputs"]
    # strict mode: the first bad row stops the run, also when a worker process finds it
    good = {
        "messages": [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    data.write_text(
        "".join(json.dumps(good | {"n": i}) + "\n" for i in range(100)) + '{"messages": 1}\n'
    )
    with pytest.raises(
        DataError, match=r"chat.jsonl:101: field 'messages': expected a list.*strict mode"
    ):
        prepare(config(tmp_path, tiny_model_dir, "strict", train_files=[str(data)], test_files=[], columns={}),
                console=QUIET, strict=True)  # fmt: skip


def test_token_check_reads_back_only_what_the_quotas_reach(tmp_path, tiny_model_dir):
    # With data.max_train_examples only the front of the take order is measured (here 91 rows);
    # rejections that use up that margin make it measure further (here ~115 are offered), and
    # the quotas still hold.
    data = tmp_path / "chat.jsonl"
    rows = []
    for i in range(300):
        question = f"question {i} " + ("card " * 200 if i % 5 else "")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": "ok"},
                ]
            }
        )
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(data)], test_files=[], columns={}, dedup="off",
                 test_fraction=0.05, val_fraction=0.0, max_train_examples=10)  # fmt: skip
    dataset = prepare(cfg, console=QUIET)
    summary = dataset.summary
    balance(summary)
    assert summary["splits"] == {"train": 10, "val": 0, "test": 15}
    assert 0 < summary["quarantined_by_reason"]["over the token limit"] < 240  # only those offered
    assert summary["not_used_after_sampling"] > 0
