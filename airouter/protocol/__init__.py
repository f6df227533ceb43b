"""The OpenAI wire, without I/O: request views for validation (requests.py, fields.py), the
endpoints, whole answers and chunk streams turned into each other (modes.py), and server-sent
events decoded and framed (sse.py)."""
