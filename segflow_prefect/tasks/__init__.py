"""Prefect tasks: thin wrappers around segflow functions that add retries, caching and artifacts."""
