"""A model's generated text, as the router reads and writes it for backends that return only text
(Triton), without I/O: the raw token stream cleaned into text deltas (textfix.py), the text parsed
into answer, reasoning and tool calls (events.py, reasoning.py,
tools/, guided_calls.py), and one choice written as OpenAI chunk payloads (choice.py, chunks.py)."""
