"""Front doors: the client APIs the router speaks, each translated to and from the one chat path.
door.py holds the doors and their renderers; each translating door has its request translator
beside its answer translator (anthropic.py and anthropic_events.py for the Anthropic Messages
API, responses.py and responses_events.py for the OpenAI Responses API), reading the chat
answers through chat_read.py. The translators are pure: payloads in, payloads out."""
