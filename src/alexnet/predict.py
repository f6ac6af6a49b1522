"""Classify image files with a checkpoint, using the test preprocessing it records (PAPER.md section 4)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import Preprocess, load_checkpoint, model_from_checkpoint
from .data.decode import BadImage, decode_image
from .evaluate import predict_probs
from .transforms import eval_views


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class name, probability), best first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top or []]}


class Predictor:
    """A checkpoint's model with its preprocessing; `views` is "center", "flip" or "ten-crop"."""

    def __init__(self, checkpoint: str | os.PathLike[str], device: str = "cpu", views: str = "center",
                 model_parallel: str | None = None) -> None:  # fmt: skip
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt)
        if model_parallel:
            from .parallel.model_parallel import parse_devices, split_towers

            devices = parse_devices(model_parallel)
            self.device = torch.device(devices[0])
            self.model: nn.Module = split_towers(model, devices).eval()
        else:
            self.device = torch.device(device)
            self.model = model.to(self.device).eval()
        self.preprocess = Preprocess.from_dict(ckpt["preprocess"])
        num = int(ckpt["model_config"].get("num_classes", 0))
        self.class_names = ckpt.get("class_names") or [str(i) for i in range(num)]
        self.views = eval_views(self.preprocess, ckpt.get("mean_image"), self.device, views)

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """One file -> uint8 (C, S, S): short side to `resize`, central square. BadImage/OSError on failure."""
        data = Path(path).read_bytes()
        arr = decode_image(data, self.preprocess.resize, self.preprocess.in_chans, min_side=1)
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # writable: torch warns on read-only

    def predict(self, paths: list[str], topk: int = 5, batch_size: int = 32) -> list[Prediction]:
        results: list[Prediction] = []
        k = min(topk, len(self.class_names))
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images, ok = [], []
            for p in chunk:
                try:
                    images.append(self.load(p))
                    ok.append(Prediction(p))
                except FileNotFoundError:
                    results.append(Prediction(p, error="no such file"))
                except IsADirectoryError:
                    results.append(Prediction(p, error="is a directory"))
                except PermissionError:
                    results.append(Prediction(p, error="permission denied"))
                except (BadImage, OSError) as exc:
                    results.append(Prediction(p, error=f"not a readable image ({exc})"))
            if not images:
                continue
            probs = predict_probs(self.model, self.views(torch.stack(images).to(self.device)))
            values, indices = probs.topk(k, dim=1)
            for pred, v, i in zip(ok, values.tolist(), indices.tolist()):
                pred.top = [(self.class_names[j], p) for j, p in zip(i, v)]
                results.append(pred)
        order = {p: n for n, p in enumerate(paths)}
        return sorted(results, key=lambda r: order[r.path])
