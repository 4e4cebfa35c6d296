"""routecar: a sidecar LLM router."""
