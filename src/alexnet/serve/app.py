"""The explorer's web app (Starlette): the JSON API, the page and its static files.

Every model call runs in a worker thread (`run_in_threadpool`), so the event loop keeps
answering while a forward pass runs; the Explorer's lock keeps the model to one caller at a
time. Errors are JSON `{"error": "..."}` with a 4xx status: 400 a bad parameter, 404 a thing
that is not there, 409 a part this server cannot show (with the reason), 413 an upload over a
limit, 422 a file that is not a usable image. A 500 means a bug.

An image is named by `?index=N` (the store's test split), `?image=ID` (an earlier upload, or
"SPLIT:N"), or sent as the body of a POST (multipart field `image`, or the raw file).
No parameter ever names a path: store images are read by index, uploads are kept in memory.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import AlexNetError, ConfigError
from .explorer import Explorer, NotFound, Picked, Unavailable
from .images import UploadError, data_url

STATIC = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD = 64 << 10  # multipart boundaries and headers around the file
FORMATS = ("json", "npy", "png")
log = logging.getLogger("alexnet.serve")


def create_app(explorer: Explorer) -> Starlette:
    """The ASGI app serving `explorer`: run it with uvicorn (server.serve) or drive it with httpx's test client."""
    api = _Api(explorer)
    both = ["GET", "POST"]
    routes = [
        Route("/", api.page),
        Route("/api/health", api.health),
        Route("/api/model", api.model),
        Route("/api/summary", api.summary),
        Route("/api/run", api.run),
        Route("/api/kernels", api.kernels),
        Route("/api/kernels.png", api.kernels_png),
        Route("/api/store", api.store),
        Route("/api/store/{index:int}.png", api.store_png),
        Route("/api/classify", api.classify, methods=both),
        Route("/api/explore", api.explore, methods=both),
        Route("/api/activations", api.activations, methods=both),
        Route("/api/neighbors", api.neighbors, methods=both),
        Route("/api/view.png", api.view_png, methods=both),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Callable[..., Any]] = {HTTPException: _http_error, AlexNetError: _user_error, Exception: _bug}
    return Starlette(routes=routes, exception_handlers=handlers)


class JSONResponse(Response):
    """JSON whose non-finite floats (a diverged run's loss, a broken checkpoint's activations) are
    null: JSON has no NaN, and the page's JSON.parse would refuse the whole answer."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, allow_nan=False, separators=(",", ":"))
        except ValueError:  # rare: walk it once and replace what JSON cannot say
            text = json.dumps(_finite(content), allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: "no such page or API route", 405: "method not allowed here"}.get(exc.status_code, str(exc.detail))
    return _error(detail, exc.status_code)


async def _user_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, UploadError):
        return _error(str(exc), exc.status)
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Unavailable) else 400
    return _error(str(exc), status)


async def _bug(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _error(f"internal error ({type(exc).__name__}); the server log has the traceback", 500)


def _int(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"missing parameter {name}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw[:40]!r}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The uploaded file's bytes: a multipart form's first file, else the raw body. 413 past `limit`."""
    cap = limit + FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise UploadError(f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise UploadError(f"upload is over the limit of {limit:,} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=cap)
    except (MultiPartException, ValueError, KeyError) as exc:
        raise ConfigError(f"malformed multipart form: {exc}") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise ConfigError("the form has no file: send the image as field 'image' (curl -F image=@FILE)")
        return await files[0].read()
    finally:
        await form.close()


class _Api:
    def __init__(self, explorer: Explorer) -> None:
        self.x = explorer

    async def _picked(self, request: Request) -> Picked:
        if request.method == "POST":
            data = await read_body(request, self.x.options.max_upload_bytes)
            return await run_in_threadpool(self.x.upload, data)
        q = request.query_params
        if ("index" in q) == ("image" in q):
            raise ConfigError("name one image: ?index=N (a store test image), ?image=ID (an earlier upload), "
                              "or POST the file")  # fmt: skip
        if "index" in q:
            return await run_in_threadpool(self.x.store_image, _int(request, "index"))
        key = q["image"]
        split, _, number = key.partition(":")
        if self.x.pick_store is not None and split == self.x.pick_store.path.name and number.isdigit():
            return await run_in_threadpool(self.x.store_image, int(number))
        return self.x.uploaded(key)

    async def _json(self, fn: Callable[..., Any], *args: Any) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(fn, *args))

    # ---------------------------------------------------------------- the page and the model
    async def page(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.x.health())

    async def model(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.x.info())

    async def summary(self, _request: Request) -> JSONResponse:
        return await self._json(self.x.summary)

    async def run(self, _request: Request) -> JSONResponse:
        return await self._json(self.x.run_info)

    async def kernels(self, _request: Request) -> JSONResponse:
        k = await run_in_threadpool(self.x.kernels)
        return JSONResponse({**{key: v for key, v in k.items() if key != "pngs"}, "images": [data_url(p) for p in k["pngs"]]})

    async def kernels_png(self, request: Request) -> Response:
        k = await run_in_threadpool(self.x.kernels)
        tower = _int(request, "tower", 1)
        if not 1 <= tower <= k["towers"]:
            raise NotFound(f"tower {tower} does not exist: conv1 feeds {k['towers']} tower(s), numbered from 1")
        return Response(k["pngs"][tower - 1], media_type="image/png")

    async def store(self, request: Request) -> JSONResponse:
        return await self._json(self.x.store_page, _int(request, "start", 0), _int(request, "count", 24))

    async def store_png(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self.x.store_png, request.path_params["index"]), media_type="image/png")

    # ---------------------------------------------------------------- one image
    async def classify(self, request: Request) -> JSONResponse:
        picked = await self._picked(request)
        return await self._json(self.x.classify, picked, _int(request, "k", 5))

    async def explore(self, request: Request) -> JSONResponse:
        picked = await self._picked(request)
        return await self._json(self.x.explore, picked, _int(request, "k", 5), request.query_params.get("scale", "map"))

    async def activations(self, request: Request) -> Response:
        picked = await self._picked(request)
        layer = request.query_params.get("layer")
        if not layer:
            raise ConfigError(f"missing parameter layer (one of {', '.join(i['name'] for i in self.x.layers)})")
        fmt = request.query_params.get("format", "json")
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt[:20]!r}")
        if fmt == "png":
            scale = request.query_params.get("scale", "map")
            return Response(await run_in_threadpool(self.x.layer_png, picked, layer, scale), media_type="image/png")
        act = await run_in_threadpool(self.x.activations, picked, layer)
        if fmt == "npy":
            buf = io.BytesIO()
            np.save(buf, act.numpy(), allow_pickle=False)
            return Response(buf.getvalue(), media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{layer}.npy"'})  # fmt: skip
        return JSONResponse({"image": picked.key, "layer": layer, "shape": list(act.shape),
                             "values": await run_in_threadpool(act.tolist)})  # fmt: skip

    async def neighbors(self, request: Request) -> JSONResponse:
        picked = await self._picked(request)
        answer, ready = await run_in_threadpool(self.x.neighbors, picked, _int(request, "k", 8))
        return JSONResponse(answer, status_code=200 if ready else 202)

    async def view_png(self, request: Request) -> Response:
        picked = await self._picked(request)
        kind = request.query_params.get("kind", "pixels")
        return Response(await run_in_threadpool(self.x.view_png, picked, kind), media_type="image/png")

