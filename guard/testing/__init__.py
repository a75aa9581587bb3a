"""Helpers for tests and benchmarks (synthetic drawings and embeddings); not for production."""
