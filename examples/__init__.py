"""Runnable examples: `python -m examples.demo` (what `make run` starts) and the Triton model
repository it serves (examples/triton)."""
