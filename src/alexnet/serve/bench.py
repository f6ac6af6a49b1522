"""The explorer's speed: classify + all activations, neighbours, the page's first load, 8 clients.

`alexnet bench serve` measures one image's classify + every layer's activations for the demo
net and the paper net at 224, a neighbours query over 60,000 fc7 vectors, the page's first load
and the p50/p99 latency under 8 concurrent clients. It is registered from bench/__init__.py but
sits with the layer it measures, above bench/. The servers are real `alexnet serve` processes on loopback ports and
this process is only their client, so client and server never share a GIL. After warm-up the
single-client requests alternate between the candidates, round after round, and the figures are
medians; the concurrent run reports percentiles. The machine's load average is recorded before
and after: on a shared 2-core machine other work moves the numbers by 2x.

Everything is built in a temporary folder unless given: a randomly initialised demo-preset net
(1 x 28 x 28, Fashion-MNIST's shape) with a synthetic 28 px store of 6,000 training images for
its neighbours, a randomly initialised paper net (224 px, 1000 classes), and a 60,000 x 4096
float16 feature folder (ReLU of Gaussian noise) for the neighbour search, timed against the
index's older bfloat16 scan and `neighbors.search` over the same folder in the same run; with
`--features FOLDER` (real fc7 vectors) the same over that folder too (bench_search.py).
`--neighbours-only` measures the neighbour search alone.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..analysis.features import open_features
from ..checkpoint import save_checkpoint
from ..data.prepare import PrepareOptions, prepare
from ..errors import AlexNetError, ConfigError
from ..models import create_model
from ..preprocess import Preprocess
from ..runtime import environment
from . import bench_search

TARGETS_MS = {"demo explore": 100.0, "paper explore": 400.0, "neighbours 60k": 50.0, "neighbours 60k fc7": 10.0,
              "first load": 1000.0}  # (neighbours: the synthetic folder, a worst case, and real fc7 vectors)
BROWSER_CONNECTIONS = 6  # a browser's parallel connections to one host


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=20, help="alternating rounds of single-client requests")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients in the load run")
    p.add_argument("--per-client", type=int, default=8, help="requests each concurrent client sends")
    p.add_argument("--rows", type=int, default=60000, help="fc7 vectors in the neighbour database")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--demo", metavar="RUN", help="a trained demo run or checkpoint (default: a random demo-preset net)")
    p.add_argument("--data", metavar="STORE", help="the demo server's store (default: synthetic, 6,000 train images)")
    p.add_argument("--no-paper", action="store_true", help="skip the paper net (224 px)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the servers and of the search (serve's default)")
    p.add_argument("--features", metavar="FOLDER", help="also search this feature folder (real fc7 vectors, `alexnet features`)")
    p.add_argument("--queries", metavar="FOLDER", help="its queries: this folder's rows (default: its own rows, each left out)")
    p.add_argument("--check-all", action="store_true", help="compare every query of --queries with neighbors.search once")
    p.add_argument("--dims", type=_levels, help="the projection's levels, e.g. 32,128 (default: the index's; 0: none)")
    p.add_argument("--neighbours-only", action="store_true", help="only the in-process neighbour search, no servers")


def _levels(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(m) for m in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dimensions like 32,128, got {text!r}") from None
    if dims == (0,):
        return ()
    if any(m < 1 for m in dims) or list(dims) != sorted(set(dims)):
        raise argparse.ArgumentTypeError(f"the levels must be ascending and >= 1 (or 0: none), got {text!r}")
    return dims


# ---------------------------------------------------------------- a client


class Client:
    """One keep-alive HTTP connection per thread to one server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):  # one retry on a connection the server closed while idle
            conn = getattr(self._local, "conn", None) or http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
                r = conn.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> bytes:
        status, data = self.request(method, path, body, ctype)
        if status != 200:
            raise AlexNetError(f"{method} {path}: HTTP {status}: {data[:200]!r}")
        return data


def multipart(data: bytes, filename: str, ctype: str) -> tuple[bytes, str]:
    """The body a browser's FormData sends for one file (field "image")."""
    boundary = "alexnetbench7d41c0"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n").encode()  # fmt: skip
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    """`alexnet serve` in a subprocess on a free loopback port."""

    def __init__(self, checkpoint: Path, data: Path | None, log: Path, threads: int = 1) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # --device cpu: serve's default is auto, and these are CPU figures like every other bench's
        cmd = [sys.executable, "-m", "alexnet", "serve", "--checkpoint", str(checkpoint), "--device", "cpu",
               "--port", str(self.port), "--threads", str(threads)]  # fmt: skip
        cmd += ["--data", str(data)] if data else []
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115 (closed with the process)
        self.client = Client(self.port)
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.client.request("GET", "/api/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AlexNetError(f"alexnet serve did not start: {log.read_text()[-500:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- what is measured


def _demo_checkpoint(out: Path) -> Path:
    """The demo preset's network (random weights: the speed is the same), Fashion-MNIST's statistics."""
    torch.manual_seed(0)
    model = create_model("alexnet-small", num_classes=10, in_chans=1, widths=(48, 96, 144, 144, 96), fc=(512, 512),
                         init="kaiming", dropout=0.1)  # fmt: skip
    pp = Preprocess(resize=28, crop=28, in_chans=1, mean=(72.94,), std=(90.02,))
    return save_checkpoint(out, model, preprocess=pp, class_names=[f"class{i}" for i in range(10)])


def _paper_checkpoint(out: Path) -> Path:
    torch.manual_seed(0)
    pp = Preprocess(resize=256, crop=224, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
    return save_checkpoint(out, create_model("alexnet", num_classes=1000), preprocess=pp)


def _images(count: int, size: tuple[int, int], channels: int, fmt: str, seed: int) -> list[bytes]:
    """Distinct smooth images (upsampled noise: photo-like file sizes), so no upload is served from the cache."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (12, 16, channels) if channels == 3 else (12, 16), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def _first_load(client: Client, info: dict[str, Any]) -> Callable[[], None]:
    """The page's requests in the order it makes them, with a browser's parallelism."""
    pool = ThreadPoolExecutor(BROWSER_CONNECTIONS)

    def load() -> None:
        client.ok("GET", "/")
        list(pool.map(lambda p: client.ok("GET", p), ["/static/explorer.css", "/static/explorer.js"]))
        client.ok("GET", "/api/model")
        parallel = ["/api/summary", "/api/kernels"] + (["/api/run"] if info["run"] else [])
        jobs = [pool.submit(client.ok, "GET", p) for p in parallel]
        if info.get("store"):
            client.ok("GET", "/api/store?start=0&count=24")
            key = json.loads(client.ok("GET", "/api/explore?index=0&scale=map&k=5"))["image"]
            if "neighbors" not in info["missing"]:
                client.ok("GET", f"/api/neighbors?image={key}&k=8")
        for j in jobs:
            j.result()

    return load


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _stats(ts: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * t for t in ts)
    p = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731 (nearest-rank percentile)
    return {"median_ms": statistics.median(ms), "p99_ms": p(0.99), "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def _concurrent(client: Client, requests: list[Callable[[], Any]], clients: int) -> dict[str, float]:
    """`requests` spread over `clients` threads sending back to back; per-request latency percentiles."""
    times: list[float] = []
    lock = threading.Lock()

    def worker(mine: list[Callable[[], Any]]) -> None:
        for fn in mine:
            t = _time(fn)
            with lock:
                times.append(t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, [requests[i::clients] for i in range(clients)]))
    wall = time.perf_counter() - t0
    s = _stats(times)
    return {"p50_ms": s["median_ms"], "p99_ms": s["p99_ms"], "max_ms": s["max_ms"], "n": s["n"],
            "requests_per_s": len(times) / wall, "clients": clients}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    if (args.queries or args.check_all) and not args.features:
        raise ConfigError("--queries and --check-all need --features FOLDER")
    for name in ("clients", "per_client", "rows", "dim", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="alexnet-bench-serve-"))
    servers: list[Server] = []
    try:
        return _run(args, tmp, servers, load_before)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path, servers: list[Server], load_before: tuple[float, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "serve", "threads": args.threads, "targets_ms": TARGETS_MS}
    if not args.neighbours_only:
        out.update(_servers(args, tmp, servers))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # as the server searches
    try:
        out["neighbours"] = _neighbour_search(args, tmp)
    finally:
        torch.set_num_threads(threads)
    return {**out, "load_before": list(load_before), "load_after": list(os.getloadavg()), "env": environment()}


def _servers(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> dict[str, Any]:
    demo_ckpt = Path(args.demo) if args.demo else _demo_checkpoint(tmp / "demo.pt")
    data = Path(args.data) if args.data else tmp / "store"
    if not args.data:
        prepare("synthetic:classes=10,per_class=600,test_per_class=100,size=28,channels=1,seed=0", data,
                PrepareOptions(progress=False))  # fmt: skip
    demo = Server(demo_ckpt, data, tmp / "demo.log", args.threads)
    servers.append(demo)
    info = json.loads(demo.client.ok("GET", "/api/model"))
    t0, deadline = time.perf_counter(), time.monotonic() + 1800
    while demo.client.request("GET", "/api/neighbors?index=0")[0] == 202:  # the index is built once, not timed
        if time.monotonic() > deadline:
            raise AlexNetError("the demo server's neighbour index did not finish in 30 minutes")
        time.sleep(0.5)
    index_build_s = time.perf_counter() - t0
    paper = None if args.no_paper else Server(_paper_checkpoint(tmp / "paper.pt"), None, tmp / "paper.log", args.threads)
    if paper:
        servers.append(paper)

    rounds = args.warmup + args.repeats
    n_test = info["store"]["count"]
    demo_pngs = _images(rounds + 1, (28, 28), 1, "PNG", seed=1)
    paper_jpegs = _images(rounds + 1, (500, 375), 3, "JPEG", seed=2)
    candidates: dict[str, Callable[[int], Any]] = {
        "demo explore (store image)": lambda r: demo.client.ok("GET", f"/api/explore?index={r % n_test}"),
        "demo explore (PNG upload)": lambda r: demo.client.ok("POST", "/api/explore", *multipart(demo_pngs[r], "a.png", "image/png")),
        "demo neighbours (HTTP)": lambda r: demo.client.ok("GET", f"/api/neighbors?index={r % n_test}&k=8"),
        "first load (demo page)": lambda r, load=_first_load(demo.client, info): load(),
    }  # fmt: skip
    if paper:
        candidates["paper explore (500x375 JPEG upload)"] = lambda r: paper.client.ok(
            "POST", "/api/explore", *multipart(paper_jpegs[r], "a.jpg", "image/jpeg"))  # fmt: skip
        candidates["paper classify (500x375 JPEG upload)"] = lambda r: paper.client.ok(
            "POST", "/api/classify", *multipart(paper_jpegs[-1 - r], "b.jpg", "image/jpeg"))  # fmt: skip
    single = _rounds(candidates, args.warmup, rounds)

    concurrent = {"demo explore": _concurrent(demo.client, [
        (lambda i=i: demo.client.ok("GET", f"/api/explore?index={i % n_test}")) for i in range(args.clients * args.per_client)
    ], args.clients)}  # fmt: skip
    if paper:
        jpegs = _images(args.clients * args.per_client, (500, 375), 3, "JPEG", seed=3)
        concurrent["paper explore"] = _concurrent(paper.client, [
            (lambda d=d: paper.client.ok("POST", "/api/explore", *multipart(d, "c.jpg", "image/jpeg"))) for d in jpegs
        ], args.clients)  # fmt: skip
    for s in servers:
        s.stop()
    return {"single_client": single, "concurrent": concurrent,
            "demo": {"checkpoint": str(demo_ckpt), "store": str(data), "test_images": n_test,
                     "index_build_s": round(index_build_s, 1)}}  # fmt: skip


def _rounds(candidates: dict[str, Callable[[int], Any]], warmup: int, rounds: int) -> dict[str, Any]:
    """Every candidate once per round, round-robin (drift hits all alike); the first `warmup` rounds untimed."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(rounds):
        for name, fn in candidates.items():
            t = _time(lambda: fn(r))
            if r >= warmup:
                times[name].append(t)
    return {name: _stats(ts) for name, ts in times.items()}


def _neighbour_search(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The search over the synthetic folder, and over `--features` when given (see bench_search)."""
    fs = bench_search.synthetic_folder(tmp / "features", args.rows, args.dim)
    count = args.warmup + args.repeats
    out = {"synthetic": bench_search.measure(fs, bench_search.synthetic_queries(fs, count), args.warmup, args.repeats,
                                             args.dims)[0]}  # fmt: skip
    del fs  # (its 0.5 GB index goes with it)
    if args.features:
        fs = open_features(args.features)
        qs = bench_search.folder_queries(fs, args.queries, None if args.check_all else count)
        timed = bench_search.Queries(qs.name, qs.vectors[:count], qs.exclude[:count])
        r, index = bench_search.measure(fs, [timed], args.warmup, args.repeats, args.dims)
        if args.check_all:
            r["check_all"] = bench_search.check_all(index, fs, qs)
        out["features"] = {**r, "path": str(Path(args.features).resolve()), "queries_from": args.queries}
    return out


def format_result(r: dict[str, Any]) -> str:
    t = r["targets_ms"]
    target = {"demo explore (store image)": t["demo explore"], "demo explore (PNG upload)": t["demo explore"],
              "paper explore (500x375 JPEG upload)": t["paper explore"], "first load (demo page)": t["first load"]}  # fmt: skip
    lines = []
    if "single_client" in r:
        lines.append("explorer (alexnet serve), one client, medians:")
        for name, s in r["single_client"].items():
            mark = f"  target <= {target[name]:.0f} ms: {'ok' if s['median_ms'] <= target[name] else 'MISSED'}" if name in target else ""
            lines.append(f"  {name:<38} {s['median_ms']:8.1f} ms  (p99 {s['p99_ms']:.1f}, n={s['n']}){mark}")
    nb = r["neighbours"]
    lines += bench_search.format_search("synthetic float16 (ReLU of noise)", nb["synthetic"], t["neighbours 60k"])
    if "features" in nb:
        lines += bench_search.format_search(f"float16 from {nb['features']['path']}", nb["features"], t["neighbours 60k fc7"])
    for name, c in r.get("concurrent", {}).items():
        lines.append(f"{c['clients']} concurrent clients, {name}: p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms, "
                     f"{c['requests_per_s']:.1f} requests/s (n={c['n']})")  # fmt: skip
    e = r["env"]
    lines.append(f"load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}; torch {e['torch']}, "
                 f"{e['cpu_count']} cpus, {r['threads']} torch thread(s) per server, commit {e['git_commit']}")  # fmt: skip
    return "\n".join(lines)
