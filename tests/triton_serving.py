"""Start, kill and restart a real Triton Inference Server (``triton_server.py``) for the tests.

The server runs from its own virtual environment (PyTriton needs NumPy < 2, phasewatch has 2):
``$PHASEWATCH_TRITON_PYTHON``, else ``.venv-triton/bin/python`` in the project, which
``./setup.sh`` makes. Where neither exists the tests that need it skip and say so.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from phasewatch.backends.triton.client import TritonOptions
from phasewatch.backends.triton.shm import NAME_PREFIX

PYTHON_ENV = "PHASEWATCH_TRITON_PYTHON"
SERVER_SCRIPT = Path(__file__).with_name("triton_server.py")
# Starting takes PyTriton's server and its Python stub; a loaded CI machine may be slow.
START_DEADLINE_S = 180.0


def server_python() -> Path:
    """The Python that runs ``triton_server.py``; skips the test where there is none."""
    configured = os.environ.get(PYTHON_ENV)
    path = Path(configured) if configured else PROJECT_ROOT / ".venv-triton" / "bin" / "python"
    if not path.is_file():
        pytest.skip(f"no Triton server environment at {path} (run ./setup.sh, or set {PYTHON_ENV} to a Python "
                    "with nvidia-pytriton and onnxruntime)")
    return path


def tritonserver_binary() -> Path:
    """The ``tritonserver`` executable PyTriton ships in the server environment."""
    found = subprocess.run([str(server_python()), "-c", "import pytriton; print(pytriton.__file__)"],
                           capture_output=True, text=True, check=True, timeout=120)
    return Path(found.stdout.strip()).parent / "tritonserver" / "bin" / "tritonserver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """One server for an ``export-triton`` repository, on ports that stay the same across restarts."""

    def __init__(self, repo: Path, work: Path) -> None:
        self.repo = repo
        self.models = sorted(entry.name for entry in repo.iterdir() if (entry / "config.pbtxt").is_file())
        self.work = work
        self.python = server_python()
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def remote(self, protocol: str = "grpc") -> TritonOptions:
        return TritonOptions(f"127.0.0.1:{self.ports[protocol]}", "", protocol)

    def log_text(self) -> str:
        return (self.work / f"triton.{self.starts}.log").read_text(errors="replace")

    def start(self) -> TritonServer:
        """Start the server and wait until its models are ready."""
        self.starts += 1
        workspace = self.work / f"workspace.{self.starts}"
        command = [str(self.python), str(SERVER_SCRIPT), str(self.repo), str(workspace),
                   *(str(self.ports[k]) for k in ("http", "grpc", "metrics"))]
        with open(self.work / f"triton.{self.starts}.log", "wb") as log:
            # A session of its own, so that kill() takes tritonserver and the Python stub with it.
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.ports['http']}")
        end = time.monotonic() + START_DEADLINE_S
        try:
            while time.monotonic() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"the Triton server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
                try:
                    if all(client.is_model_ready(model) for model in self.models):
                        return
                except Exception:  # not listening yet: connection refused, reset
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        pytest.fail(f"the Triton server did not load {', '.join(self.models)} within {START_DEADLINE_S:.0f} s:\n"
                    f"{self.log_text()[-3000:]}")

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP the server and everything it started (it holds its connections and answers
        nothing: a hung server), or SIGCONT them."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server and everything it started: a server that disappears. What they made
        in /dev/shm (PyTriton's tensor store, about 90 MB a start) would outlive them: removed;
        the regions a client registered are the client's to free, as with a real server."""
        if self.proc is not None and self.proc.poll() is None:
            leftovers = shared_memory_of(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
            for path in leftovers:
                if not path.name.startswith(NAME_PREFIX):
                    path.unlink(missing_ok=True)


def shared_memory_of(group: int) -> set[Path]:
    """The /dev/shm files the processes of process group ``group`` have mapped."""
    found: set[Path] = set()
    for proc in Path("/proc").iterdir():
        try:
            # The process group is the 5th field of /proc/PID/stat (after the parenthesised name).
            if not proc.name.isdigit() or int((proc / "stat").read_text().rpartition(")")[2].split()[2]) != group:
                continue
            maps = (proc / "maps").read_text()
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
        for line in maps.splitlines():
            fields = line.split(None, 5)  # address, perms, offset, device, inode, path
            if len(fields) == 6 and fields[5].startswith("/dev/shm/") and not fields[5].endswith("(deleted)"):
                found.add(Path(fields[5]))
    return found
