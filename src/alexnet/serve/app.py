"""The explorer's web app (Starlette): the JSON API built from its table (api.py), the page and
its static files.

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

import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

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
from .api import ENDPOINTS, IMAGE, INDEX, Endpoint
from .explorer import Explorer, NotFound, Picked, Unavailable
from .images import UploadError

STATIC = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD = 64 << 10  # multipart boundaries and headers around the file
log = logging.getLogger("alexnet.serve")


def create_app(explorer: Explorer, endpoints: Sequence[Endpoint] = ENDPOINTS) -> Starlette:
    """The ASGI app serving `explorer`: run it with uvicorn (server.serve) or drive it with httpx's test client.
    `endpoints`: the API table (api.ENDPOINTS) it answers."""

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [Route("/", page)]
    routes += [Route(e.path, _route(explorer, e), methods=list(e.methods)) for e in endpoints]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    handlers: dict[Any, Callable[..., Any]] = {HTTPException: _http_error, AlexNetError: _user_error, Exception: _bug}
    return Starlette(routes=routes, exception_handlers=handlers)


def _route(x: Explorer, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint of the table as a Starlette route: parameters checked first (cheap), then the
    image read, then the handler in a worker thread."""

    async def answer(request: Request) -> Response:
        kwargs = {**request.path_params, **endpoint.parse(request.query_params, x)}
        if endpoint.image:
            kwargs["picked"] = await _picked(x, request)
        return _response(await run_in_threadpool(endpoint.handler, x, **kwargs))

    answer.__name__ = endpoint.handler.__name__
    return answer


def _response(answer: Any) -> Response:
    if isinstance(answer, Response):
        return answer
    if isinstance(answer, bytes):
        return Response(answer, media_type="image/png")
    if isinstance(answer, tuple):
        body, status = answer
        return JSONResponse(body, status_code=status)
    return JSONResponse(answer)


async def _picked(x: Explorer, request: Request) -> Picked:
    """The image a request names: a POST's body, else ?index=N or ?image=ID (exactly one)."""
    if request.method == "POST":
        data = await read_body(request, x.options.max_upload_bytes)
        return await run_in_threadpool(x.upload, data)
    q = request.query_params
    index, key = INDEX.parse(q.get("index"), x), IMAGE.parse(q.get("image"), x)
    if (index is None) == (key is None):
        raise ConfigError("name one image: ?index=N (a store test image), ?image=ID (an earlier upload), "
                          "or POST the file")  # fmt: skip
    if index is not None:
        return await run_in_threadpool(x.store_image, index)
    return await run_in_threadpool(x.image, key)


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
