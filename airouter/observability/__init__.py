"""Metrics, tracing and access logs: cheap when idle, nothing at all when off."""
