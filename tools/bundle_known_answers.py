"""Generate the answers shipped for the default model (`tunewright.inference.known_answers`).

Run by a maintainer when the default model, the bundled prompts or the answer limits change:

    .venv/bin/python tools/bundle_known_answers.py

It loads the model in fp32 (the dtype every machine can run, so the forgetting check can use the
answers on fp32-only machines) and answers every bundled replay prompt and every general question
exactly as training and evaluation would, then writes `known_answers/<fingerprint>.jsonl`
(delete the file of weights no longer shipped by hand).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tunewright.config import EvalConfig
from tunewright.evaluate.general import MAX_NEW_TOKENS, general_set, generate_general
from tunewright.files import write_text_atomic
from tunewright.inference import known_answers
from tunewright.models import DEFAULT_MODEL, load_model
from tunewright.train.replay import MAX_ANSWER_TOKENS, generate_replay_answers, replay_prompts

FOLDER = Path(known_answers.__file__).parent / known_answers.FOLDER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    loaded = load_model(args.model, dtype=torch.float32)
    started = time.perf_counter()
    replay = list(replay_prompts())
    answers = dict(
        zip(
            [(p, MAX_ANSWER_TOKENS) for p in replay],
            generate_replay_answers(loaded.model, loaded.tokenizer, replay),
            strict=True,
        )
    )
    general = [item.prompt for item in general_set()]
    batch = EvalConfig.model_fields["batch_size"].default
    answers |= dict(
        zip(
            [(p, MAX_NEW_TOKENS) for p in general],
            generate_general(loaded.model, loaded.tokenizer, batch_size=batch),
            strict=True,
        )
    )
    note = (
        f"greedy, torch {torch.__version__}, {len(replay)} replay prompts and {len(general)} "
        f"general questions, tools/bundle_known_answers.py"
    )
    digest = known_answers.fingerprint(loaded.model)
    lines = known_answers.file_lines(loaded.model, args.model, digest, answers, note)
    target = FOLDER / known_answers.file_name(digest)
    FOLDER.mkdir(exist_ok=True)
    write_text_atomic(target, "\n".join(lines) + "\n")
    print(f"{target}: {len(answers)} answers in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
