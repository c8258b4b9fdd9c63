"""A broker on this machine for the demo, benchmarks and tests: Mosquitto when it is installed
(started on a free loopback port with a generated config), else amqtt in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from discover.sdk.errors import DiscoverError

log = logging.getLogger(__name__)


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


class LocalBroker:
    """Start with :meth:`start`, stop with :meth:`stop` (restartable on the same port)."""

    def __init__(self, kind: str = "auto", port: int | None = None,
                 extra_conf: str = "", persistent: bool = False) -> None:
        """``extra_conf``: more Mosquitto config lines for this listener (auth, TLS);
        ``persistent``: Mosquitto keeps sessions and queued messages across a restart (saved
        on stop, as a production broker with ``persistence true`` does)."""
        if kind not in ("auto", "mosquitto", "amqtt"):
            raise DiscoverError(f"unknown local broker {kind!r}; use auto, mosquitto or amqtt")
        exe = find_mosquitto()
        if kind == "mosquitto" and exe is None:
            raise DiscoverError("mosquitto not found; install it (apt-get install mosquitto) "
                                "or use the embedded amqtt broker")
        self.kind = "mosquitto" if kind == "mosquitto" or (kind == "auto" and exe) else "amqtt"
        self.exe = exe
        self.extra_conf = extra_conf
        self.persistent = persistent
        self.port = port or free_port()
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="discover-broker-")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._amqtt = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self.kind == "mosquitto":
            conf = Path(self._dir.name) / "mosquitto.conf"
            anonymous = "" if "allow_anonymous" in self.extra_conf else "allow_anonymous true\n"
            # as root Mosquitto drops to its own user, which cannot read files (password file,
            # certificates) under a private temp dir: this local broker stays the caller's user
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                anonymous += "user root\n"
            persistence = (f"persistence true\npersistence_location {self._dir.name}/\n"
                           if self.persistent else "persistence false\n")
            conf.write_text(f"listener {self.port} 127.0.0.1\n{anonymous}{self.extra_conf}\n"
                            f"{persistence}message_size_limit 0\nmax_queued_messages 100000\n"
                            "log_dest none\n")
            self._proc = subprocess.Popen([self.exe, "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            self._start_amqtt()
        if not wait_port(self.port, timeout):
            err = ""
            if self._proc is not None and self._proc.poll() is not None and self._proc.stderr:
                err = self._proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
                err = f": {err[0]}" if err else ""
            self.stop()
            raise DiscoverError(f"local {self.kind} broker did not start on port {self.port}{err}")
        return self

    def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.ERROR)
        started = threading.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        }

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self._amqtt = Broker(config, loop=loop)
                await self._amqtt.start()
                started.set()

            loop.run_until_complete(boot())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="amqtt-broker", daemon=True)
        self._thread.start()
        started.wait(10)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._loop is not None and self._amqtt is not None:
            fut = asyncio.run_coroutine_threadsafe(self._amqtt.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = self._amqtt = self._thread = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
