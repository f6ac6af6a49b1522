"""The explorer's JSON API as one table: each endpoint's methods, path, parameters (typed, with
their ranges, choices and defaults), handler and one-line answer.

The table is the only place an endpoint is declared: app.py builds the Starlette routes from it
and checks every query parameter through it (a missing, malformed, out-of-range or unknown-choice
value, or a name the endpoint does not take, is a 400 naming the parameter), and `render_table`
writes docs/explorer.md's API table from it (tests/test_serve_api.py keeps the two equal; after
a change, paste `python -c "from alexnet.serve.api import render_table; print(render_table())"`).

Adding an endpoint is one `Endpoint` in ENDPOINTS, its handler, and its test. A handler is called
in a worker thread with the Explorer, the chosen image (`picked`, for endpoints with `image=True`),
the path parameters and the checked query parameters, all by name; it returns a dict (JSON), a
`(dict, status)` pair, PNG bytes, or a Starlette Response. What only the model or the store can
say (a store index past the end, a layer the model lacks, a tower it does not have) is a 404 from
the Explorer: the table checks what is wrong whatever the checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.responses import Response

from ..errors import ConfigError
from .explorer import MAX_K, SCALES, VIEW_KINDS, Explorer, NotFound, Picked
from .images import data_url


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a parameter that must be given


@dataclass(frozen=True)
class Param:
    """One query parameter: an int (within `lo`..`hi` when given) or a str (one of `choices` when
    given); `default` when absent (REQUIRED: a 400 when absent; None: absent is allowed)."""

    name: str
    type: type = int
    default: Any = REQUIRED
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    # the values that exist in this server (a layer's names), listed when the parameter is missing
    known: Callable[[Explorer], Sequence[str]] | None = None

    def __post_init__(self) -> None:
        assert self.type in (int, str), self
        assert not self.choices or self.default is REQUIRED or self.default in self.choices, self

    def parse(self, raw: str | None, explorer: Explorer) -> Any:
        if raw is None:
            if self.default is REQUIRED:
                known = f" (one of {', '.join(self.known(explorer))})" if self.known else ""
                raise ConfigError(f"missing parameter {self.name}{known}")
            return self.default
        if self.type is str:
            if self.choices and raw not in self.choices:
                raise ConfigError(f"{self.name} must be one of {', '.join(self.choices)}, got {raw[:20]!r}")
            return raw
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{self.name} must be an integer, got {raw[:40]!r}") from None
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ConfigError(f"{self.name} must be {self._range()}, got {value}")
        return value

    def _range(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"between {self.lo} and {self.hi}"
        return f">= {self.lo}" if self.lo is not None else f"<= {self.hi}"

    def describe(self) -> str:
        """The parameter as the docs' table writes it: `k` 1-100 (5)."""
        if self.choices:
            kind = " " + "\\|".join(f"`{c}`" for c in self.choices)
        elif self.lo is not None and self.hi is not None:
            kind = f" {self.lo}-{self.hi}"
        elif self.lo is not None or self.hi is not None:
            kind = " " + self._range()
        else:
            kind = ""
        default = " (required)" if self.default is REQUIRED else "" if self.default is None else f" ({self.default})"
        return f"`{self.name}`{kind}{default}"


# The image an endpoint works on: ?index=N (a store test image), ?image=ID (an earlier answer's
# `image`), or the body of a POST. app.py reads them; Explorer.image parses the id.
INDEX = Param("index", int, None)
IMAGE = Param("image", str, None)


@dataclass(frozen=True)
class Endpoint:
    """One row of the API: what it answers to, what it calls, what it takes, what it answers."""

    methods: tuple[str, ...]
    path: str  # Starlette's syntax: {name:int} is a path parameter
    handler: Callable[..., Any]
    doc: str  # the answer, one line, as the docs' table shows it
    params: tuple[Param, ...] = ()
    image: bool = False  # the request names one image (INDEX, IMAGE or a POST body)

    def __post_init__(self) -> None:
        assert ("POST" in self.methods) <= self.image, f"{self.path}: only an image can be POSTed"
        assert len({p.name for p in self.accepted}) == len(self.accepted), self.path

    @property
    def accepted(self) -> tuple[Param, ...]:
        return ((INDEX, IMAGE) if self.image else ()) + self.params

    def parse(self, query: Mapping[str, str], explorer: Explorer) -> dict[str, Any]:
        """The checked values of this endpoint's own parameters (not INDEX and IMAGE), by name."""
        names = {p.name for p in self.accepted}
        unknown = [name for name in query if name not in names]
        if unknown:
            takes = f"it takes {', '.join(sorted(names))}" if names else "it takes no parameters"
            raise ConfigError(f"unknown parameter {unknown[0][:40]!r} for {self.path}: {takes}")
        return {p.name: p.parse(query.get(p.name), explorer) for p in self.params}


# ---------------------------------------------------------------- handlers that are more than an Explorer method
def kernels(x: Explorer) -> dict[str, Any]:
    k = x.kernels()
    return {**{key: v for key, v in k.items() if key != "pngs"}, "images": [data_url(p) for p in k["pngs"]]}


def kernels_png(x: Explorer, tower: int) -> bytes:
    k = x.kernels()
    if not 1 <= tower <= k["towers"]:
        raise NotFound(f"tower {tower} does not exist: conv1 feeds {k['towers']} tower(s), numbered from 1")
    return k["pngs"][tower - 1]


def activations(x: Explorer, picked: Picked, layer: str, format: str, scale: str) -> Any:
    if format == "png":
        return x.layer_png(picked, layer, scale)
    act = x.activations(picked, layer)
    if format == "npy":
        buf = io.BytesIO()
        np.save(buf, act.numpy(), allow_pickle=False)
        return Response(buf.getvalue(), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{layer}.npy"'})  # fmt: skip
    return {"image": picked.key, "layer": layer, "shape": list(act.shape), "values": act.tolist()}


def neighbors(x: Explorer, picked: Picked, k: int) -> tuple[dict[str, Any], int]:
    answer, ready = x.neighbors(picked, k)
    return answer, 200 if ready else 202


def _k(default: int) -> Param:
    return Param("k", int, default, lo=1, hi=MAX_K)


SCALE = Param("scale", str, "map", choices=SCALES)
GET, BOTH = ("GET",), ("GET", "POST")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(GET, "/api/health", Explorer.health,
             '`{"status": "ok", "arch", "uptime_s", "store", "neighbors"}`'),
    Endpoint(GET, "/api/model", Explorer.info,
             "arch, source, classes, preprocessing, towers, the layers (name, shape, kind, towers), the store, "
             "what is missing and why, the limits"),
    Endpoint(GET, "/api/summary", Explorer.summary,
             "the architecture table (`Summary.to_dict()`)"),
    Endpoint(GET, "/api/run", Explorer.run_info,
             "a run folder's train and validation records, events, final and best validation, settings "
             "(409 for a file)"),
    Endpoint(GET, "/api/kernels", kernels,
             "conv1's kernels: count, shape, towers, one PNG data URL per tower"),
    Endpoint(GET, "/api/kernels.png", kernels_png,
             "one tower's kernels as a PNG (towers from 1)",
             params=(Param("tower", int, 1),)),
    Endpoint(GET, "/api/store", Explorer.store_page,
             "`count` test images from `start`: index, label, class, PNG data URL",
             params=(Param("start", int, 0), Param("count", int, 24, lo=1, hi=200))),
    Endpoint(GET, "/api/store/{index:int}.png", Explorer.store_png,
             "test image `index` as a PNG"),
    Endpoint(BOTH, "/api/classify", Explorer.classify,
             '`{"image", "top": [{"class", "index", "probability"}, ...]}` (+ `store_index`, `label`, `class` '
             "for a store image)",
             params=(_k(5),), image=True),
    Endpoint(BOTH, "/api/explore", Explorer.explore,
             "top-k, the view (`view`, `view_normalized`: PNG data URLs) and every layer: name, shape, kind, "
             "towers, min, max, mean, zero fraction, one palette PNG data URL per tower",
             params=(_k(5), SCALE), image=True),
    Endpoint(BOTH, "/api/activations", activations,
             "one layer's activations: `json` (shape and nested values), `npy` (float32, `np.load`), `png` "
             "(the mosaic, towers side by side, scaled by `scale`)",
             params=(Param("layer", str, known=lambda x: [i["name"] for i in x.layers]),
                     Param("format", str, "json", choices=("json", "npy", "png")), SCALE),
             image=True),
    Endpoint(BOTH, "/api/neighbors", neighbors,
             "the k nearest training images by fc7: store index, label, class, distance, thumbnail; "
             "`search_ms`, rows ranked exactly; 202 with the build's progress while the index is being built",
             params=(_k(8),), image=True),
    Endpoint(BOTH, "/api/view.png", Explorer.view_png,
             "the centre view as the network sees it (`pixels`) or its input values stretched (`normalized`)",
             params=(Param("kind", str, "pixels", choices=VIEW_KINDS),), image=True),
)  # fmt: skip


def render_table(endpoints: Sequence[Endpoint] = ENDPOINTS) -> str:
    """The API table of docs/explorer.md, in Markdown, from `endpoints`."""
    lines = ["| method | path | parameters | answer |", "|---|---|---|---|"]
    for e in endpoints:
        params = (["an image"] if e.image else []) + [p.describe() for p in e.params]
        path = e.path.replace(":int}", "}")
        lines.append(f"| {', '.join(e.methods)} | `{path}` | {', '.join(params) or '-'} | {e.doc} |")
    return "\n".join(lines)
