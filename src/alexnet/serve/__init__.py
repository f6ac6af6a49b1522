"""The explorer: `alexnet serve`, a local model server (JSON API) and one page that shows a
trained network from the inside: its predictions, every layer's activations, conv1's kernels
(Fig. 3), the nearest training images by fc7 distance (Fig. 4), the architecture table and the
run's training curves.

    explorer.py   what is shown, computed with the inference path (alexnet.inference) only
    index.py      the fc7 neighbour index: built on first use, cached beside the run, exact search
    images.py     uploads checked and decoded, PNG encodings, the view mapped back to pixels
    api.py        the API as one table: each endpoint's path, parameters, handler and doc line
    app.py        the Starlette app built from that table: parameter checks, uploads, JSON errors
    server.py     uvicorn, Ctrl-C
    static/       the page (HTML, CSS, JS; nothing fetched from outside the machine)
"""

from .app import create_app
from .explorer import Explorer, ServeOptions
from .server import serve

__all__ = ["Explorer", "ServeOptions", "create_app", "serve"]
