"""NVIDIA Triton over gRPC: the backend (backend.py), the model interfaces it detects (models.py,
looked up once per model by lookup.py), what the router adds to a model that only takes a
prompt (features.py: tools, structured output, reasoning, logprobs, n through fanout.py), one
generation's state machine (generation.py), embeddings (embed.py) and Triton's errors."""
