"""Test fake of pycuda: see ``driver`` for what it models and where it is stricter than the real one."""
