"""tunewright: turn a general pre-trained LLM into a domain specialist, and prove it."""

__version__ = "0.1.0"
