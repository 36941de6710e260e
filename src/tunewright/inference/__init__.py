"""Generation from a loaded model: the one inference layer that evaluate, train (replay), export
(parity) and serve all import.

Two decoders live here, because their jobs differ:

- `generate.generate` answers a list of prompts known up front (evaluation, replay during
  training, export parity) and returns when all are done. It drives transformers'
  `model.generate` in length-sorted batches, which gives it constrained decoding over a label
  trie (every answer is a valid label). A long prefix that every prompt shares (a fair base's
  instruction and k-shot examples) is computed once and attended by every row from one copy,
  and each batch's own keys go into a preallocated cache (`shared_prefix`).
- `engine.Engine` serves requests that arrive at any time (the HTTP server, the terminal chat).
  It runs its own decoding loop, because `model.generate` fixes its batch at the start: here
  rows join and leave the running batch at every step (continuous batching), each row has its
  own sampling settings, stop strings, deadline and LoRA adapter (peft's `adapter_names`), and
  text is streamed as it is produced.

Folding one into the other would mean rebuilding label constraints and prefix sharing inside the
engine's step loop, or giving up streaming and per-row adapters. Instead both take their stop
tokens and pad id from `tokens` and lay out prompts with `padding.left_pad`, and a test holds
them to the same greedy answers (tests/inference/test_agreement.py).

This layer may import tunewright.dataset, models, hardware, config and errors, never a stage.
"""
