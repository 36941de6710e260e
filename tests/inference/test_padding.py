"""Left padding: every prompt ends in the last column, pads are masked, positions skip pads."""

import torch

from tunewright.inference.padding import left_pad

PAD = 0


def test_prompts_end_in_the_last_column():
    batch = left_pad([[5, 6, 7], [8], [9, 10]], PAD)
    assert batch.input_ids.tolist() == [[5, 6, 7], [PAD, PAD, 8], [PAD, 9, 10]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    # each row's real tokens are numbered from 0, as if it ran alone
    real = batch.position_ids[batch.attention_mask.bool()]
    assert real.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.input_ids.dtype == torch.long


def test_pads_go_between_a_shared_prefix_and_the_rest():
    batch = left_pad([[1, 2, 5, 6, 7], [1, 2, 8]], PAD, shared_prefix=2)
    assert batch.input_ids.tolist() == [[1, 2, 5, 6, 7], [1, 2, PAD, PAD, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    assert batch.position_ids.tolist()[1][-1] == 2  # the prefix's two tokens, then this one
