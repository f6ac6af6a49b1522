"""Running the explorer: uvicorn on one host and port, stopped cleanly by Ctrl-C.

uvicorn catches SIGINT/SIGTERM, lets requests in flight finish (at most GRACE seconds), closes
the socket, then re-raises the signal: the CLI turns the KeyboardInterrupt into one line and
exit status 130. The index build runs in a daemon thread; a build cut short leaves only a
temporary folder, which the next build removes.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from ..errors import ConfigError
from .app import create_app
from .explorer import Explorer

GRACE = 5  # seconds requests in flight get to finish after Ctrl-C


def check_port(host: str, port: int) -> None:
    """A ConfigError now, rather than a uvicorn traceback later, when host:port cannot be bound."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot use host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning") -> None:
    """Serve `explorer` until Ctrl-C (KeyboardInterrupt is re-raised after a clean shutdown)."""
    check_port(host, port)
    config = uvicorn.Config(create_app(explorer), host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACE, server_header=False)  # fmt: skip
    uvicorn.Server(config).run()


class BackgroundServer:
    """The app on a free loopback port, in a thread (tests and `alexnet bench serve`):

        with BackgroundServer(explorer) as server:
            urllib.request.urlopen(server.url + "/api/health")
    """

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(create_app(explorer), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=GRACE)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(GRACE + 5)
        self.sock.close()
