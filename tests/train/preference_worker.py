"""A preference-tuning process for tests that need a real separate process (SIGKILL, torchrun):
trains on the pairs of tests/train/test_preference.py.

usage: python preference_worker.py RECIPE
"""

import sys

import torch
from rich.console import Console

from tests.train.test_preference import preference_dataset
from tunewright.config import load_config
from tunewright.train.loop import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = load_config(sys.argv[1])
    train(cfg, preference_dataset(), console=Console(quiet=True))
