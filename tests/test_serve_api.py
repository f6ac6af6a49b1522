"""The explorer's API table (serve/api.py): the docs show it as it is, every parameter of every
endpoint is checked the same way, and a new endpoint is one entry plus its handler."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import save_checkpoint
from alexnet.models import create_model
from alexnet.preprocess import Preprocess
from alexnet.serve import Explorer, ServeOptions, create_app
from alexnet.serve.api import ENDPOINTS, REQUIRED, Endpoint, Param, render_table

TestClient = pytest.importorskip("starlette.testclient", reason="the explorer's test client needs httpx").TestClient

DOCS = Path(__file__).resolve().parents[1] / "docs" / "explorer.md"


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    """A random small net served without a store: parameters are checked before anything is looked up."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve-api") / "small.pt"
    model = create_model("alexnet-small", num_classes=4, in_chans=3, widths=[8, 16, 16, 16, 16], fc=[24, 24])
    save_checkpoint(path, model, preprocess=Preprocess.raw(3, 32, 32), class_names=["a", "b", "c", "d"])
    return Explorer(str(path), ServeOptions(index_progress=False))


@pytest.fixture(scope="module")
def client(explorer):
    with TestClient(create_app(explorer)) as c:
        yield c


def png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_docs_api_table_is_the_rendered_table():
    text = DOCS.read_text()
    found = re.search(r"<!-- api-table: [^\n]*-->\n(.*?)\n<!-- end api-table -->", text, re.S)
    assert found, "docs/explorer.md lost its api-table markers"
    assert found.group(1) == render_table(), (
        "docs/explorer.md's API table differs from serve/api.py's: replace it with the output of "
        'python -c "from alexnet.serve.api import render_table; print(render_table())"'
    )


def test_the_app_serves_exactly_the_tables_routes(client):
    paths = {r.path for r in client.app.routes}
    assert {e.path for e in ENDPOINTS} <= paths and paths - {e.path for e in ENDPOINTS} == {"/", "/static"}


def _path(e: Endpoint) -> str:
    return e.path.replace("{index:int}", "0")


# A good value of each required parameter, sent along when another parameter is the one under test.
GOOD = {"layer": "fc7"}


def _given(e: Endpoint, but: str = "") -> list[str]:
    return [f"{p.name}={GOOD[p.name]}" for p in e.params if p.default is REQUIRED and p.name != but]


def _bad_values() -> list[tuple[str, str, str, str]]:
    """(method, path, query, the parameter the error must name) for every checked parameter in the table."""
    cases = []
    for e in ENDPOINTS:
        queries = [("&".join([*_given(e), "colour=red"]), "colour")]  # a name the endpoint does not take
        for p in e.params:
            bad = ["x"] if p.type is int else []
            bad += [str(p.lo - 1)] if p.lo is not None else []
            bad += [str(p.hi + 1)] if p.hi is not None else []
            bad += ["nope"] if p.choices else []
            queries += [("&".join([*_given(e, p.name), f"{p.name}={v}"]), p.name) for v in bad]
            if p.default is REQUIRED:
                queries.append(("&".join(_given(e, p.name)), p.name))
        cases += [(m, _path(e), q, name) for m in e.methods for q, name in queries]
    return cases


def test_every_required_parameter_has_a_good_value_here():
    assert {p.name for e in ENDPOINTS for p in e.params if p.default is REQUIRED} <= set(GOOD)


@pytest.mark.parametrize("method,path,query,name", _bad_values())
def test_every_bad_parameter_is_a_400_naming_it(client, method, path, query, name):
    url = f"{path}?{query}" if query else path
    r = client.request(method, url, content=png() if method == "POST" else None)
    assert r.status_code == 400, r.text
    assert name in r.json()["error"], r.json()


def test_boundary_values_and_choices_are_accepted(client):
    """The edges of every range and every choice pass the check (this server has no store, so the
    store's endpoints then answer 409, not 400)."""
    for e in ENDPOINTS:
        for p in e.params:
            values = [p.lo, p.hi] if p.type is int else list(p.choices)
            for v in [x for x in values if x is not None]:
                query = "&".join([*_given(e, p.name), f"{p.name}={v}"])
                method = "POST" if e.image else "GET"
                r = client.request(method, f"{_path(e)}?{query}", content=png() if e.image else None)
                assert r.status_code in (200, 202, 409), (e.path, query, r.text)


def test_an_image_is_named_once(client):
    r = client.get("/api/classify")
    assert r.status_code == 400 and "name one image" in r.json()["error"]
    key = client.post("/api/classify", content=png()).json()["image"]
    assert client.get(f"/api/classify?image={key}").json()["image"] == key
    r = client.get(f"/api/classify?image={key}&index=0")
    assert r.status_code == 400 and "name one image" in r.json()["error"]
    r = client.get("/api/classify?index=zero")
    assert r.status_code == 400 and "index" in r.json()["error"]


def test_a_new_endpoint_is_one_entry_and_its_handler(explorer):
    def echo(x, picked=None, n=0, mode=""):
        return {"n": n, "mode": mode, "arch": x.predictor.arch, **({"image": picked.key} if picked else {})}

    extra = (Endpoint(("GET",), "/api/echo", echo, "n and mode back", (Param("n", int, 3, lo=1, hi=9),
                      Param("mode", str, "a", choices=("a", "b")))),
             Endpoint(("GET", "POST"), "/api/echo-image", echo, "the image's id", image=True))  # fmt: skip
    with TestClient(create_app(explorer, ENDPOINTS + extra)) as c:
        assert c.get("/api/echo").json() == {"n": 3, "mode": "a", "arch": "alexnet-small"}
        assert c.get("/api/echo?n=9&mode=b").json()["n"] == 9
        for query, name in (("n=10", "n"), ("n=one", "n"), ("mode=c", "mode"), ("m=a", "m")):
            r = c.get(f"/api/echo?{query}")
            assert r.status_code == 400 and name in r.json()["error"], query
        assert c.post("/api/echo-image", content=png()).json()["image"].startswith("upload:")
        assert c.post("/api/echo").status_code == 405
    rows = render_table(ENDPOINTS + extra).splitlines()
    assert rows[-2] == "| GET | `/api/echo` | `n` 1-9 (3), `mode` `a`\\|`b` (a) | n and mode back |"
    assert rows[-1] == "| GET, POST | `/api/echo-image` | an image | the image's id |"
