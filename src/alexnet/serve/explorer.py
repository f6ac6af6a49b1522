"""What the explorer shows about one checkpoint, computed with the inference path only.

`Explorer` holds a `Predictor` (the one way a checkpoint becomes a model here), the store the
page picks test images from, the neighbour index, the run folder's metrics, and the last
uploads. Every method is synchronous and may take tens of milliseconds: the web app calls them
in worker threads. One lock serialises the model: `activations` hooks the model's modules while
it runs, so two forwards at once would see each other's hooks.

The module is one class of short methods, one per thing the API answers (~410 lines); the API
table that calls them and checks their parameters (api.py), the image decoding and encoding
(images.py) and the neighbour index (index.py) live apart.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import figures
from ..data.store import Store, open_split
from ..errors import AlexNetError, ConfigError, DataError
from ..inference import Predictor
from ..models import feature_info
from ..summary import summarize
from ..train.rundir import RunDir
from . import images
from .images import UploadError
from .index import INDEX_MEMORY, IndexBuilder

SCALES = ("map", "layer")  # activation maps scaled each to its own maximum, or the whole layer to one
VIEW_KINDS = ("pixels", "normalized")
MAX_K = 100  # classes or neighbours one request may ask for
UPLOADS_KEPT = 64  # decoded uploads remembered by id (the paper net's are 196 KB each)


class NotFound(AlexNetError):
    """A thing the client named that is not there (an image id, a store index, a layer); HTTP 404."""


class Unavailable(AlexNetError):
    """A part this server cannot show (no store given, no run folder, no fc7); HTTP 409 with the reason."""


@dataclass(frozen=True)
class ServeOptions:
    """What `alexnet serve` is told besides the checkpoint; checked on creation."""

    data: str | None = None  # prepared dataset (or one split) for store images and neighbours
    layer: str = "fc7"  # the neighbour feature (the paper's Fig. 4)
    device: str = "auto"  # CUDA when there is one, else the CPU (runtime.resolve_device)
    max_upload_bytes: int = images.MAX_UPLOAD_BYTES
    max_upload_pixels: int = images.MAX_UPLOAD_PIXELS
    index_memory: int = INDEX_MEMORY  # bfloat16 bytes for the fast neighbour scan (0: neighbors.search alone)
    index_progress: bool = True  # the index build's progress bar on the server's stderr

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_upload_pixels < 1:
            raise ConfigError(f"upload limits must be positive, got {self.max_upload_bytes} bytes, "
                              f"{self.max_upload_pixels} pixels")  # fmt: skip
        if self.index_memory < 0:
            raise ConfigError(f"index_memory must be >= 0, got {self.index_memory}")
        if not self.layer:
            raise ConfigError("the neighbour layer must be named (e.g. fc7)")


@dataclass
class Picked:
    """An image the client chose: uint8 (C, S, S), its key, and where it came from."""

    pixels: Tensor
    key: str  # "test:12" or "upload:<sha256 prefix>": made and read back by the Explorer only
    store_index: int | None = None
    label: int | None = None


class Explorer:
    """One checkpoint (a file or a run folder) and, with `options.data`, its store: every answer
    the server gives, as plain dicts, PNG bytes or tensors. Store or run parts that are absent are
    listed in `missing` with the reason; asking for them raises Unavailable."""

    def __init__(self, source: str, options: ServeOptions | None = None) -> None:
        self.options = opts = options or ServeOptions()
        self.source = Path(source)
        self.predictor = Predictor.load(source, device=opts.device)
        self.model_lock = threading.Lock()
        self.started = time.time()
        self.named_layers = feature_info(self.predictor.model)  # what the model declares: names, towers
        self.towers = self.named_layers.towers
        self.layers, self._logits = self._layer_table()  # _logits: the layer whose softmax is the top-k, or None
        self._uploads: OrderedDict[str, Tensor] = OrderedDict()
        self._uploads_lock = threading.Lock()
        self._summary: dict[str, Any] | None = None
        self._kernels: dict[str, Any] | None = None
        self.run = RunDir(self.source) if self.source.is_dir() and (self.source / "metrics.jsonl").is_file() else None
        self.pick_store, self.database, self.index = self._stores(opts)
        self.missing = self._missing()

    # ---------------------------------------------------------------- set-up
    def _layer_table(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every declared layer with its output shape (one forward of a probe image), its display
        kind and its towers.

        Also decides whether one forward can answer both the top-k and the activations: when the
        last layer's output is the model's output (true of every registered model), its softmax is
        `Predictor.probs` exactly, and `explore` saves the second forward (~30% of its time)."""
        pp = self.predictor.preprocess
        g = torch.Generator().manual_seed(0)
        probe = torch.randint(0, 256, (1, pp.in_chans, pp.resize, pp.resize), generator=g).to(torch.uint8)
        names = self.named_layers.names
        with self.model_lock:
            acts = self.predictor.activations(probe, names)
            probs = self.predictor.probs(probe)
        logits = names[-1] if torch.equal(_softmax(acts[names[-1]]), probs) else None
        table = []
        for layer in self.named_layers:
            table.append({"name": layer.name, "shape": list(acts[layer.name].shape[1:]),
                          "kind": "maps" if layer.is_map else "vector", "towers": layer.towers})  # fmt: skip
        return table, logits

    def _stores(self, opts: ServeOptions) -> tuple[Store | None, Store | None, IndexBuilder | None]:
        if opts.data is None:
            return None, None, None
        pick = open_split(opts.data, None, default=("test", "val", "train"))
        try:
            database = open_split(opts.data, None, default=("train",))
        except DataError:  # one split given: it is both the picking store and the database
            database = pick
        for store in {pick.path: pick, database.path: database}.values():
            self.predictor.check_store(store)
        if opts.layer not in self.named_layers:
            return pick, database, None
        index = IndexBuilder(self.source, opts.data, database, opts.layer, device=str(self.predictor.device),
                             memory=opts.index_memory, progress=opts.index_progress)  # fmt: skip
        return pick, database, index

    def _missing(self) -> dict[str, str]:
        """The parts this server cannot show, each with the reason (the page prints them)."""
        out = {}
        if self.pick_store is None:
            out["store"] = "no --data STORE given: no store images to pick (upload or drop an image instead)"
            out["neighbors"] = "no --data STORE given: no training images to search for neighbours"
        elif self.index is None:
            out["neighbors"] = (f"this model has no layer {self.options.layer!r} "
                                f"(layers: {', '.join(self.named_layers.names)}); pass --layer")  # fmt: skip
        if self.run is None:
            out["run"] = f"{self.source} is a checkpoint file, not a run folder: no training curves"
        return out

    # ---------------------------------------------------------------- choosing an image
    def store_image(self, index: int) -> Picked:
        store = self._need_store()
        if not 0 <= index < len(store):
            raise NotFound(f"store index {index} is out of range: the {store.path.name} split has {len(store)} images")
        row = store.read(np.array([index]))[0]  # (S, S, C)
        return Picked(torch.from_numpy(row).permute(2, 0, 1).contiguous(), f"{store.path.name}:{index}", index,
                      int(store.labels[index]))  # fmt: skip

    def image(self, key: str) -> Picked:
        """The image an earlier answer named `key`: "SPLIT:N" (store_image's key) or "upload:<hash>" (upload's)."""
        split, _, number = key.partition(":")
        if self.pick_store is not None and split == self.pick_store.path.name and number.isascii() and number.isdigit():
            return self.store_image(int(number))
        return self.uploaded(key)

    def upload(self, data: bytes) -> Picked:
        """Decode an uploaded file (UploadError when refused) and remember it under its content hash."""
        key = "upload:" + hashlib.sha256(data).hexdigest()[:16]
        with self._uploads_lock:
            if key in self._uploads:
                self._uploads.move_to_end(key)
                return Picked(self._uploads[key], key)
        pixels = images.read_upload(self.predictor, data, max_bytes=self.options.max_upload_bytes,
                                    max_pixels=self.options.max_upload_pixels)  # fmt: skip
        with self._uploads_lock:
            self._uploads[key] = pixels
            while len(self._uploads) > UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return Picked(pixels, key)

    def uploaded(self, key: str) -> Picked:
        with self._uploads_lock:
            if key not in self._uploads:
                raise NotFound(f"no uploaded image {key!r} (the last {UPLOADS_KEPT} uploads are kept): upload it again")
            self._uploads.move_to_end(key)
            return Picked(self._uploads[key], key)

    def _need_store(self) -> Store:
        if self.pick_store is None:
            raise Unavailable(self.missing["store"])
        return self.pick_store

    # ---------------------------------------------------------------- the model's answers
    # Values come checked by the API table (api.py): k in 1..MAX_K, scale in SCALES, kind in VIEW_KINDS.
    def classify(self, picked: Picked, k: int = 5) -> dict[str, Any]:
        """Top-k classes through `Predictor.probs`, the path `alexnet predict` takes."""
        with self.model_lock:
            probs = self.predictor.probs(picked.pixels[None])
        return {**self._describe(picked), "top": self._top(probs, k)}

    def explore(self, picked: Picked, k: int = 5, scale: str = "map") -> dict[str, Any]:
        """Everything the page shows about one image in one answer: top-k, the view the network
        sees, and every layer's activations as palette PNGs (data URLs), towers apart."""
        names = [layer["name"] for layer in self.layers]
        x = picked.pixels[None]
        with self.model_lock:
            acts = self.predictor.activations(x, names)
            probs = _softmax(acts[self._logits]) if self._logits else self.predictor.probs(x)
        view = self.predictor.views("center")(x.to(self.predictor.device))[0, 0].cpu()
        pp = self.predictor.preprocess
        layers = [self._encode_layer(info, acts[info["name"]][0], scale) for info in self.layers]
        return {
            **self._describe(picked),
            "top": self._top(probs, k),
            "view": images.data_url(images.png(images.view_pixels(view, pp))),
            "view_normalized": images.data_url(images.png(images.view_contrast(view, pp))),
            "scale": scale,
            "layers": layers,
        }

    def layer(self, name: str) -> dict[str, Any]:
        """The layer table's row of `name`; NotFound naming the layers there are."""
        for info in self.layers:
            if info["name"] == name:
                return info
        raise NotFound(f"no layer {name!r}; layers: {', '.join(info['name'] for info in self.layers)}")

    def activations(self, picked: Picked, layer: str) -> Tensor:
        """One layer's activations (its shape without the batch), float32 on the CPU."""
        self.layer(layer)
        with self.model_lock:
            out = self.predictor.activations(picked.pixels[None], [layer])[layer]
        return out[0].float().cpu()

    def layer_png(self, picked: Picked, layer: str, scale: str = "map") -> bytes:
        """One layer as one PNG: the towers' mosaics side by side for maps, a strip for vectors."""
        info = self.layer(layer)
        act = self.activations(picked, layer)
        parts = self._layer_arrays(info, act, scale)
        if len(parts) == 1:
            return images.png(parts[0], images.PALETTE)
        h = max(p.shape[0] for p in parts)
        gap = np.full((h, 4), images.GAP, np.uint8)
        padded = [np.pad(p, ((0, h - p.shape[0]), (0, 0)), constant_values=images.GAP) for p in parts]
        return images.png(np.concatenate([x for p in padded for x in (p, gap)][:-1], axis=1), images.PALETTE)

    def view_png(self, picked: Picked, kind: str = "pixels") -> bytes:
        view = self.predictor.views("center")(picked.pixels[None].to(self.predictor.device))[0, 0].cpu()
        fn = images.view_pixels if kind == "pixels" else images.view_contrast
        return images.png(fn(view, self.predictor.preprocess))

    def _layer_arrays(self, info: dict[str, Any], act: Tensor, scale: str) -> list[np.ndarray]:
        if info["kind"] == "vector":
            return [images.strip(images.to_levels(act.reshape(1, -1), scale)[0])]
        levels = images.to_levels(act, scale)  # (K, h, w); "layer" scale: one maximum for the whole layer
        per = levels.shape[0] // info["towers"]
        return [images.tile(levels[t * per : (t + 1) * per]) for t in range(info["towers"])]

    def _encode_layer(self, info: dict[str, Any], act: Tensor, scale: str) -> dict[str, Any]:
        parts = self._layer_arrays(info, act, scale)
        a = act.float()
        return {**info, "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
                "zero_fraction": float((a == 0).float().mean()),
                "images": [images.data_url(images.png(p, images.PALETTE)) for p in parts]}  # fmt: skip

    def _top(self, probs: Tensor, k: int) -> list[dict[str, Any]]:
        values, indices = probs[0].topk(min(k, probs.shape[1]))
        names = self.predictor.class_names
        return [{"class": names[i], "index": i, "probability": p} for i, p in zip(indices.tolist(), values.tolist())]

    def _describe(self, picked: Picked) -> dict[str, Any]:
        d: dict[str, Any] = {"image": picked.key}
        if picked.store_index is not None:
            d["store_index"] = picked.store_index
        if picked.label is not None and self.pick_store is not None:
            d["label"] = picked.label
            d["class"] = self.pick_store.class_names[picked.label]
        return d

    # ---------------------------------------------------------------- neighbours (Fig. 4)
    def neighbors(self, picked: Picked, k: int = 8, *, thumbnails: bool = True) -> tuple[dict[str, Any], bool]:
        """(answer, ready). Not ready: the index is being built (the answer says how far)."""
        if self.index is None:
            raise Unavailable(self.missing["neighbors"])
        index = self.index.ready()
        if index is None:
            if self.index.status.state == "failed":
                raise Unavailable(self.index.status.message)
            return {**self._describe(picked), "status": self.index.status.to_dict()}, False
        layer, views = self.options.layer, index.fs.meta.get("views", "center")
        with self.model_lock:
            vector = self.predictor.features(picked.pixels[None], layer, views)[0].numpy()
        t0 = time.perf_counter()
        own = index.row_of(picked.store_index) if picked.store_index is not None and self._same_store() else -1
        found, ranked = index.search(vector, k, exclude=own)
        seconds = time.perf_counter() - t0
        if thumbnails and found:
            assert self.database is not None
            rows = self.database.read(np.array([n["store_index"] for n in found]))
            for n, row in zip(found, rows):
                n["png"] = images.data_url(images.png(images.hwc(row)))
        answer = {**self._describe(picked), "layer": layer, "database": f"{self.database.path.name if self.database else '?'}",
                  "count": len(index), "search_ms": round(1e3 * seconds, 2), "ranked_exactly": ranked,
                  "excluded_itself": own >= 0, "neighbors": found, "status": self.index.status.to_dict()}  # fmt: skip
        return answer, True

    def _same_store(self) -> bool:
        return self.database is not None and self.pick_store is not None and self.database.path == self.pick_store.path

    # ---------------------------------------------------------------- the model and its run
    def info(self) -> dict[str, Any]:
        p = self.predictor
        pp = p.preprocess.to_dict()
        d: dict[str, Any] = {
            "arch": p.arch, "source": str(self.source), "device": str(p.device), "classes": p.class_names,
            "preprocess": {**pp, "mean_image": p.preprocess.mean_image is not None}, "towers": self.towers,
            "layers": self.layers, "missing": self.missing, "run": self.run is not None,
            "neighbors": None if self.index is None else {"layer": self.options.layer, **self.index.status.to_dict()},
            "limits": {"upload_bytes": self.options.max_upload_bytes, "upload_pixels": self.options.max_upload_pixels,
                       "k": MAX_K},
        }  # fmt: skip
        if self.pick_store is not None:
            s = self.pick_store
            d["store"] = {"split": s.path.name, "count": len(s), "size": s.size, "channels": s.channels,
                          "classes": s.class_names}  # fmt: skip
        return d

    def summary(self) -> dict[str, Any]:
        """The architecture table (summary.summarize) at the size this checkpoint is fed."""
        if self._summary is None:
            model = self.predictor.model
            with self.model_lock:
                cpu_model = model if self.predictor.device.type == "cpu" else copy.deepcopy(model).cpu()
                s = summarize(cpu_model, input_size=self.predictor.preprocess.crop, arch=self.predictor.arch)
            self._summary = s.to_dict()
        return self._summary

    def run_info(self) -> dict[str, Any]:
        """Training curves and final numbers of a run folder, from its metrics.jsonl."""
        if self.run is None:
            raise Unavailable(self.missing["run"])
        metrics = self.run.metrics()
        train = [{k: m[k] for k in ("step", "epoch", "loss", "train_error", "lr") if k in m}
                 for m in metrics if "loss" in m and "event" not in m]  # fmt: skip
        val = [{k: m[k] for k in ("step", "epoch", "split", "val_top1_error", "val_top5_error", "val_loss", "lr",
                                  "lr_dropped") if k in m} for m in metrics if "val_top1_error" in m]  # fmt: skip
        events = [m for m in metrics if "event" in m]
        try:
            config = self.run.read_config()
        except AlexNetError:
            config = {}
        final = val[-1] if val else None
        best = min(val, key=lambda m: m["val_top1_error"]) if val else None
        return {"run": str(self.run.path), "train": train, "validation": val, "events": events, "final": final,
                "best": best, "checkpoint_meta": self.predictor.checkpoint.get("meta", {}),
                "config": {k: config[k] for k in ("epochs", "batch_size", "precision", "preset") if k in config}}  # fmt: skip

    def kernels(self) -> dict[str, Any]:
        """conv1's kernels (Fig. 3) as one colour PNG per tower (Caffe's BGR kernels shown in RGB)."""
        if self._kernels is None:
            self._kernels = self._draw_kernels()
        return self._kernels

    def _draw_kernels(self) -> dict[str, Any]:
        weight, towers_ = self.predictor.conv1()  # in RGB order, Caffe's BGR kernels too
        w = weight.numpy()
        k = w.shape[0]
        towers_ = towers_ if towers_ >= 1 and k % towers_ == 0 else 1
        per = k // towers_
        cols = int(np.ceil(np.sqrt(per)))
        pngs = []
        for t in range(towers_):
            mosaic = figures.kernel_mosaic(w[t * per : (t + 1) * per], cols)  # each kernel scaled on its own, white gaps
            pngs.append(images.png(np.rint(mosaic * 255).astype(np.uint8)))
        return {"count": k, "shape": list(w.shape[1:]), "towers": towers_, "pngs": pngs}

    def store_page(self, start: int, count: int) -> dict[str, Any]:
        """Thumbnails of `count` test images from `start`: index, label, class, PNG data URL."""
        store = self._need_store()
        if start < 0 or start >= len(store):
            raise NotFound(f"start {start} is out of range: the {store.path.name} split has {len(store)} images")
        idx = np.arange(start, min(start + count, len(store)))
        rows = store.read(idx)
        names = store.class_names
        return {"split": store.path.name, "total": len(store), "start": start,
                "images": [{"index": int(i), "label": int(store.labels[i]), "class": names[int(store.labels[i])],
                            "png": images.data_url(images.png(images.hwc(r)))} for i, r in zip(idx, rows)]}  # fmt: skip

    def store_png(self, index: int) -> bytes:
        picked = self.store_image(index)
        return images.png(images.chw(picked.pixels))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "arch": self.predictor.arch, "uptime_s": round(time.time() - self.started, 1),
                "store": self.pick_store is not None,
                "neighbors": None if self.index is None else self.index.status.state}  # fmt: skip


def _softmax(logits: Tensor) -> Tensor:
    """inference.predict_probs' arithmetic for one view, on the CPU."""
    return logits.float().softmax(dim=1).cpu()


__all__ = ["Explorer", "NotFound", "Picked", "ServeOptions", "Unavailable", "UploadError"]
