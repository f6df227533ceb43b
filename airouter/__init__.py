"""airouter: a fast OpenAI-compatible router."""
