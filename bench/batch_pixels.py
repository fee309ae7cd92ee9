"""Whether batching tiles pays on this machine: one backend call over N tiles of a side.

For a bundled model on ONNX Runtime's CPU provider, it times one call on batches of 1, 2, 4
and 8 tiles of 128, 256 and 512 pixels (best of 3 after a warm-up) and prints the cost per
pixel against one tile at a time (the baseline, 1.00). The engine's per-call pixel cap for
the CPU (``backends.CPU_CALL_PIXELS``) comes from this.

Run: ``python bench/batch_pixels.py [--model superalloy] [--threads N]``
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import best_of

from phasewatch.backends.base import physical_cores
from phasewatch.core.pipeline import open_model

SIDES = (128, 256, 512)
BATCHES = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="superalloy")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    model = open_model(args.model, "cpu", threads=threads)
    rng = np.random.default_rng(0)
    print(f"{args.model}, {threads} thread(s): cost per pixel against one tile per call")
    for side in SIDES:
        costs = []
        for batch in BATCHES:
            tiles = rng.normal(0, 1, (batch, model.bundle.channels, side, side)).astype(np.float32)
            costs.append(best_of(3, lambda tiles=tiles: model.backend.run(tiles)) / batch)
        print(f"  {side:>3} px tiles: " + ", ".join(
            f"batch {b} {c / costs[0]:.2f}x ({c * 1e3:.1f} ms a tile)" for b, c in zip(BATCHES, costs, strict=True)))
    model.close()


if __name__ == "__main__":
    main()
