"""A training process for tests that need a real separate process (SIGKILL, torchrun).

usage: python train_worker.py RECIPE [--no-rng-restore] [overrides...]
"""

import sys

import torch
from rich.console import Console

from tunewright.config import load_config
from tunewright.pipeline import load_or_prepare
from tunewright.train.loop import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[2:]
    restore_rng = "--no-rng-restore" not in args
    cfg = load_config(sys.argv[1], [a for a in args if not a.startswith("--")])
    dataset = load_or_prepare(cfg, console=Console(quiet=True))
    train(cfg, dataset, console=Console(quiet=True), restore_rng=restore_rng)
