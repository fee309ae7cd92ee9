"""Test fake of ``cuda.bindings`` (cuda-python): only ``runtime`` is faked."""
