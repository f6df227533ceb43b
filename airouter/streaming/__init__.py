"""Streaming helpers: sans-IO text fixups and SSE framing for token streams."""
