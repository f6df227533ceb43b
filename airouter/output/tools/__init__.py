"""Tool-call parsers, one module per output format (hermes, llama3, mistral, pythonic) over the
pieces they share (base.py, parser.py). The formats by name: output/parsers.py."""
