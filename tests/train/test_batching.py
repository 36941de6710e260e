"""The micro-batch schedule: every unit once per epoch, length-grouped, groups kept apart."""

import random

from tunewright.train.batching import batch_schedule, epoch_batches


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 300) for _ in range(n)]


def test_an_epoch_holds_every_unit_once():
    lengths = _lengths(1000)
    batches = epoch_batches(lengths, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)


def test_groups_never_share_a_micro_batch():
    lengths = _lengths(1000)
    groups = [int(i % 10 == 0) for i in range(1000)]  # every tenth unit a replay row
    schedule = batch_schedule(lengths, 16, epochs=2, seed=1, groups=groups)
    for batch in schedule:
        assert len({groups[i] for i in batch}) == 1
    first_epoch = schedule[: len(epoch_batches(lengths, 16, 1, groups))]
    assert sorted(i for b in first_epoch for i in b) == list(range(1000))
    # without groups, some micro-batch mixes them: the test above could fail
    mixed = batch_schedule(lengths, 16, epochs=2, seed=1)
    assert any(len({groups[i] for i in batch}) == 2 for batch in mixed)


def test_one_group_gives_the_schedule_of_none():
    lengths = _lengths(700)
    assert batch_schedule(lengths, 8, 1.5, seed=5, groups=[0] * 700) == batch_schedule(
        lengths, 8, 1.5, seed=5
    )


def test_replayed_rows_are_a_group_of_their_own(tiny_model_dir):
    from tunewright.dataset.example import Example, Message
    from tunewright.dataset.tokenize import ChatTokenizer
    from tunewright.models import load_tokenizer
    from tunewright.train.micro_batches import MicroBatches

    chat = ChatTokenizer(load_tokenizer(str(tiny_model_dir)), "Name the intent.", 128)
    examples = [
        Example(messages=(Message("user", f"question {i}"), Message("assistant", "intent")))
        for i in range(5)
    ]
    replayed = [chat.encode_example(examples[0])] * 2
    build = dict(pad_id=0, packing=False, max_seq_len=128)
    assert MicroBatches.build(chat, examples, **build).groups is None
    assert MicroBatches.build(chat, examples, extra=replayed, **build).groups == [0] * 5 + [1] * 2
