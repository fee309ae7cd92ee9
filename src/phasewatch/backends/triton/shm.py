"""System shared memory between the ``triton`` backend and a Triton server on the same host.

With ``[model] triton_shared_memory`` the tiles and the logits pass through two regions in
``/dev/shm`` that the server maps, instead of through the socket: a 4-class model's logits are
four times its input, and copying them through gRPC or HTTP costs the server and the client
each a serialisation. A region is made at the size of the largest batch so far and registered with
the server under a name unique to this process and region; a larger batch replaces it. A server
that restarted has forgotten every registration, so the backend drops its regions after any failed
request (:meth:`Region.drop`) and the next request registers new ones.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

NAME_PREFIX = "phasewatch-"  # of every region's name (and of its file in /dev/shm)


class Region:
    """One system shared-memory region registered with the server (module doc)."""

    def __init__(self, role: str) -> None:
        self.role = role  # in or out: part of the region's name
        self.handle: Any = None
        self.name = ""
        self.size = 0
        self.made = 0

    def fit(self, client: Any, byte_size: int) -> str:
        """The name of a registered region of at least ``byte_size`` bytes."""
        import tritonclient.utils.shared_memory as shm

        if self.handle is not None and byte_size <= self.size:
            return self.name
        self.drop(client)
        self.made += 1
        # Unique per process and per region, and new for each size: the server maps a region
        # once, at the size it was registered with.
        self.name = f"{NAME_PREFIX}{os.getpid()}-{id(self):x}-{self.role}-{self.made}"
        self.handle = shm.create_shared_memory_region(self.name, f"/{self.name}", byte_size, create_only=True)
        self.size = byte_size
        client.register_system_shared_memory(self.name, f"/{self.name}", byte_size)
        return self.name

    def write(self, array: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [array])

    def read(self, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the float32 array of ``shape`` at the region's start (the region is reused)."""
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(self.handle, np.float32, shape))

    def drop(self, client: Any) -> None:
        """Unregister (where the server still knows the region) and free it; nothing if none."""
        import tritonclient.utils.shared_memory as shm
        from tritonclient.utils import InferenceServerException

        if self.handle is None:
            return
        handle, self.handle, self.size = self.handle, None, 0
        with contextlib.suppress(InferenceServerException, OSError):  # a server that went away forgot it
            client.unregister_system_shared_memory(self.name)
        with contextlib.suppress(FileNotFoundError):  # its file was removed from /dev/shm by someone else
            shm.destroy_shared_memory_region(handle)
