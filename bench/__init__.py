"""Load-testing harness for airouter: `python -m bench [--quick]` (see bench/__main__.py)."""
