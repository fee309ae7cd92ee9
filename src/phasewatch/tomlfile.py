"""``tomllib`` on every supported Python (the standard library's from 3.11, ``tomli`` before)."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
