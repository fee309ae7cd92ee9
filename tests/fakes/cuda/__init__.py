"""Test fake of cuda-python: see ``bindings.runtime`` for what it models."""
