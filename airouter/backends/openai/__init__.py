"""OpenAI-compatible upstreams (vLLM, llama.cpp, OpenAI, another router) over the HTTP client in
backends/http/: the backend, and the relay of their SSE streams (relay_state.py the pure state
machine, relay.py the half that reads the connection)."""
