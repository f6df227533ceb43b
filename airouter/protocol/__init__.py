"""OpenAI wire structs: request views for validation, response and chunk shapes."""
