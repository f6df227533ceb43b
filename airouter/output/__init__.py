"""A model's generated text, as the router reads and writes it for backends that return only text
(Triton), without I/O: the raw token stream cleaned into text deltas (textfix.py); the text
parsed into answer, reasoning and tool calls (the events in events.py, the parsers by name in
parsers.py, their formats in reasoning.py and tools/, forced calls in guided_calls.py); and one
choice written as OpenAI chunk payloads (choice.py, chunks.py)."""
