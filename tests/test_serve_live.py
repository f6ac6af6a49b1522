"""The explorer over real sockets: concurrent clients, garbage that is not HTTP, and Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from alexnet.serve import Explorer, ServeOptions
from alexnet.serve.server import BackgroundServer

from analysis_helpers import make_dataset, make_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-live")
    data = make_dataset(root / "data", channels=3, size=24)
    return data, make_run(data, root / "run", steps=2)


@pytest.fixture(scope="module")
def server(tiny):
    data, run = tiny
    with BackgroundServer(Explorer(str(run), ServeOptions(data=str(data), index_progress=False))) as s:
        yield s


def get(server: BackgroundServer, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_eight_concurrent_clients_get_the_sequential_answers(server):
    paths = [f"/api/explore?index={i % 16}" for i in range(32)] + [f"/api/classify?index={i}" for i in range(16)]
    sequential = {p: get(server, p) for p in sorted(set(paths))}
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda p: (p, get(server, p)), paths))
    for path, (status, body) in concurrent:
        assert status == 200
        assert body["top"] == sequential[path][1]["top"]  # no request saw another's activations
        if "layers" in body:
            assert [layer["max"] for layer in body["layers"]] == [layer["max"] for layer in sequential[path][1]["layers"]]


def test_garbage_on_the_socket_leaves_it_answering(server):
    rng = np.random.default_rng(0)
    junk = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]  # fmt: skip
    for i in range(300):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(junk[i % len(junk)] if i % 2 else rng.bytes(int(rng.integers(1, 3000))))
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(1024)  # a 400 or a closed connection: either is fine, a hang is not
            except (TimeoutError, ConnectionResetError):
                pass
    assert get(server, "/api/health")[1]["status"] == "ok"
    assert get(server, "/api/classify?index=1")[0] == 200


def test_ctrl_c_stops_the_server_cleanly(tiny):
    data, run = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).with_name("alexnet")
    proc = subprocess.Popen([str(cli), "serve", str(run), "--data", str(data), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/explore?index=0", timeout=30).read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "stopped" in err and "Traceback" not in err
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_one_line(tiny):
    data, run = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cli = Path(sys.executable).with_name("alexnet")
        r = subprocess.run([str(cli), "serve", str(run), "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_serve_runs_end_to_end(tiny, tmp_path, capsys):
    """`alexnet bench serve` on tiny inputs: every figure is there (the speeds themselves are docs/benchmarks.md's)."""
    from alexnet.cli import main

    data, run = tiny
    argv = ["bench", "serve", "--demo", str(run), "--data", str(data), "--repeats", "2", "--warmup", "0", "--rows", "500",
            "--dim", "64", "--clients", "2", "--per-client", "2", "--no-paper", "--json"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["single_client"]) == {"demo explore (store image)", "demo explore (PNG upload)", "demo neighbours (HTTP)",
                                       "first load (demo page)"}  # fmt: skip
    searched = r["neighbours"]["synthetic"]["queries"]
    assert set(searched) == {"near query", "random query"} and r["concurrent"]["demo explore"]["n"] == 4
    for methods in searched.values():
        assert {m["same_answers"] for m in methods.values()} == {"2/2"}
    assert main(["bench", "serve", "--clients", "0"]) == 2


def test_bench_serve_searches_a_feature_folder_and_checks_every_query(tmp_path, capsys):
    from alexnet.cli import main
    from alexnet.serve.bench_search import synthetic_folder

    db, queries = synthetic_folder(tmp_path / "db", 700, 48), synthetic_folder(tmp_path / "q", 30, 48)
    argv = ["bench", "serve", "--neighbours-only", "--rows", "400", "--dim", "48", "--repeats", "3", "--warmup", "1",
            "--features", str(db.path), "--queries", str(queries.path), "--check-all", "--dims", "4,8", "--json"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert "single_client" not in r and r["neighbours"]["synthetic"]["rows"] == 400
    real = r["neighbours"]["features"]
    assert real["rows"] == 700 and real["dims"] == [4, 8] and real["check_all"]["identical"] == "30/30"
    timed = real["queries"]["train split rows"]
    assert timed["index"]["same_answers"] == "4/4" and timed["index"]["n"] == 3 and timed["neighbors.search"]["n"] == 3
    assert main(["bench", "serve", "--check-all"]) == 2  # needs --features
