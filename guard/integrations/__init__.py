"""Thin adapters that put the guard into the tools platforms run (diffusers first)."""
