"""The prepared dataset: the examples, their chat tokenisation and the on-disk splits.

A shared layer: the data stage writes it, and every later stage (train, evaluate, export) reads
it from here, so no stage imports another.
"""
