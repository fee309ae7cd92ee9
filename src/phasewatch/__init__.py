"""phasewatch: segmentation and phase statistics of micrographs, beside the microscope."""

import os

# NumPy's OpenBLAS threads busy-wait after each call on the cores ONNX Runtime's threads need:
# one luminance conversion per field made a 512 x 512 superalloy field cost 145 ms instead of
# 110 ms on two cores (floor 100 ms, bench/field_limit.py). The runtime's BLAS calls are tiny
# and split by rows, so one thread gives the same numbers. Set before NumPy is first imported
# (the console script imports this package first); a value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.2.0"
