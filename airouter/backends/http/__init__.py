"""The upstream HTTP/1.1 client: connections (direct or through a proxy), request heads, response
parsing (sans-IO, in parser.py), bounded content decoding and the client's errors. It knows
nothing of OpenAI: the backend that speaks it is in backends/openai/."""
