"""Fixtures that run a real `busbar serve` node on loopback for the Python tests.

The binary is $BUSBAR_BIN if set, else <repo>/target/debug/busbar (build it
with `cargo build` first); <repo> is found from this file's location.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long a node may take to print its "serving on" line, and how long it may
# take to stop after SIGTERM before it is killed.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def busbar_bin() -> Path:
    """The busbar binary under test."""
    override = os.environ.get("BUSBAR_BIN")
    path = Path(override) if override else REPO_ROOT / "target" / "debug" / "busbar"
    if not path.is_file():
        pytest.fail(
            f"busbar binary not found at {path}: run `cargo build` "
            "or set BUSBAR_BIN to the binary to test",
            pytrace=False,
        )
    return path.resolve()


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without BUSBAR_* variables.

    Every `busbar` flag also reads a BUSBAR_* variable (BUSBAR_INSECURE,
    BUSBAR_CONFIG, BUSBAR_LISTEN, ...), so a developer's shell could otherwise
    silently change the node or the CLI under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSBAR_")}
    env.update(extra)
    return env


@dataclass
class BusbarNode:
    address: str  # host:port, no scheme (a gRPC target)
    admin: dict  # parsed <data_dir>/admin.json
    data_dir: Path
    process: subprocess.Popen
    stdout_lines: list[str] = field(default_factory=list)  # what it printed so far
    stderr_path: Path | None = None

    @property
    def version(self) -> str:
        """The version from the banner "busbar X.Y.Z serving on ..."."""
        banner = next(line for line in self.stdout_lines if " serving on " in line)
        return banner.split()[1]

    def stderr(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")



def cli(node, *args: str, stdin: str | None = None) -> str:
    """`busbar --config <node's admin.json> ARGS...`, which must succeed; its stdout."""
    result = subprocess.run(
        [str(busbar_bin()), "--config", str(node.data_dir / "admin.json"), *args],
        input=stdin, capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert result.returncode == 0, f"busbar {' '.join(args)}: {result.stderr}"
    return result.stdout

def _pump_lines(stream, lines: list[str], q: "queue.Queue[str | None]") -> None:
    """Read a child's stdout to EOF: keeps the pipe drained for the node's whole life."""
    for line in stream:
        lines.append(line.rstrip("\n"))
        q.put(line)
    q.put(None)  # EOF: the process closed stdout (usually it exited)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_node(data_dir: Path, log_dir: Path | None = None,
             listen: str = "127.0.0.1:0", args: tuple[str, ...] = ()) -> Iterator[BusbarNode]:
    """Start `busbar serve` with data in data_dir; stop it on exit."""
    data_dir = Path(data_dir)
    log_dir = Path(log_dir) if log_dir else data_dir.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{data_dir.name}.stderr.log"
    # The gateway cannot run where every client must show a certificate
    # (browsers show none): such a node is started without it.
    wants_certs = any(arg == "required" and args[i - 1] == "--client-certs"
                      for i, arg in enumerate(args) if i > 0)
    cmd = [
        str(busbar_bin()), "serve",
        "--data", str(data_dir),
        "--listen", listen,
        "--metrics-listen", "127.0.0.1:0",
        "--ws-listen", "off" if wants_certs else "127.0.0.1:0",
        "--grace", "0.2",
        *args,
    ]
    # stderr goes to a file, not a pipe, so a chatty log can never fill a pipe
    # buffer and block the server.
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            bufsize=1,
            env=clean_env(),
        )
    lines: list[str] = []
    q: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_pump_lines, args=(proc.stdout, lines, q), daemon=True).start()
    node = BusbarNode(address="", admin={}, data_dir=data_dir, process=proc,
                      stdout_lines=lines, stderr_path=stderr_path)
    try:
        _wait_until_serving(node, q)
        node.admin = json.loads((data_dir / "admin.json").read_text())
        node.address = urlsplit(node.admin["address"]).netloc
        yield node
    finally:
        _stop(proc)


_TIMED_OUT = object()  # sentinel: no line came before the deadline


def _wait_until_serving(node: BusbarNode, q: "queue.Queue[str | None]") -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = q.get(timeout=remaining) if remaining > 0 else _TIMED_OUT
        except queue.Empty:
            line = _TIMED_OUT
        if line is None:  # stdout closed: the process died
            why = f"exited with code {node.process.wait(timeout=STOP_TIMEOUT_S)} before serving"
            break
        if line is _TIMED_OUT:
            why = f"did not print 'serving on' within {START_TIMEOUT_S:.0f} s"
            break
        if " serving on " in line:
            return
    _stop(node.process)
    stdout = "\n".join(node.stdout_lines)
    pytest.fail(
        f"busbar serve {why}\ncommand: {' '.join(map(str, node.process.args))}\n"
        f"--- stdout ---\n{stdout}\n--- stderr ---\n{node.stderr()}",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def busbar_node(tmp_path_factory) -> Iterator[BusbarNode]:
    """One node shared by a test module, with its data in a fresh temp dir."""
    base = tmp_path_factory.mktemp("busbar")
    with run_node(base / "data") as node:
        yield node


@pytest.fixture
def busbar_node_at(tmp_path) -> Iterator[Callable[[Path], BusbarNode]]:
    """A factory: busbar_node_at(data_dir) starts a node with data in data_dir.

    For tests that need the data dir at a particular place (e.g. the README
    tour, where the CLI's default config path is busbar-data/admin.json).
    Every node started is stopped at the end of the test.
    """
    with contextlib.ExitStack() as stack:
        def start(data_dir: Path) -> BusbarNode:
            return stack.enter_context(run_node(Path(data_dir), log_dir=tmp_path / "logs"))

        yield start


class RestartableNode:
    """A node that can be killed (SIGKILL, no goodbye to clients) and started
    again on the same port with the same data, as a crash and restart would."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir, self.log_dir = data_dir, log_dir
        self._stack = contextlib.ExitStack()
        self.node = self._stack.enter_context(run_node(data_dir, log_dir))

    def kill(self) -> None:
        self.node.process.kill()
        self.node.process.wait()

    def start(self) -> BusbarNode:
        self.node = self._stack.enter_context(
            run_node(self.data_dir, self.log_dir, listen=self.node.address))
        return self.node

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def restartable_node(tmp_path) -> Iterator[RestartableNode]:
    """A node of its own for a test that kills and restarts it."""
    node = RestartableNode(tmp_path / "data", tmp_path / "logs")
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(params=["sync", "async"])
def face(request):
    """Each test that takes it runs on both faces, blocking and asyncio."""
    from faces import Face

    f = Face(request.param)
    yield f
    f.close()


@pytest.fixture
def conn(face, busbar_node):
    """A connection to the test node on the test's face."""
    c = face.connect(busbar_node)
    yield c
    c.close()
