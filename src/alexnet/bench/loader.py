"""Data pipeline: decode speed-up, prepare speed, and store loader + augmentation vs the conventional JPEG pipeline.

Everything runs on one core (torch threads 1, loader workers 0, prepare workers 1) so the
figures are per core. A class-folder tree of JPEGs is generated (photo-like content at an
ImageNet-typical size), prepared into a 256 store, then, alternating in the same process:
  conventional: per image Pillow open + decode, resize short side to 256, central 256 crop,
                random 224 crop, random flip, to float tensor, stack (what an ImageFolder
                pipeline does every epoch);
  store:        Loader batch (uint8 gather) + TrainTransform (random crop + flip + PCA lighting).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..data.decode import decode_image
from ..data.loader import Loader
from ..data.prepare import PrepareOptions, prepare
from ..data.store import open_store
from ..preprocess import TrainTransform
from ..runtime import environment, tune_allocator
from .timing import alternate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=512, help="JPEG files generated for the tree (default 512)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--jpeg-size", default="500x375", help="WxH of the generated JPEGs (ImageNet's typical size)")
    p.add_argument("--decode-size", default="1024x768", help="WxH of the JPEGs for the decode comparison")
    p.add_argument("--decode-images", type=int, default=32, help="JPEGs in the decode comparison")
    p.add_argument("--size", type=int, default=256, help="store side")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--store-batches", type=int, default=20, help="batches per timed store repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workdir", default=None, help="keep the generated tree and store here (default: a temp folder)")


def photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour fields plus fine noise: JPEG sizes and decode times like natural photos (~0.6 bit/pixel)."""
    small = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    img = base + rng.normal(0, 10, base.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_tree(root: Path, images: int, classes: int, w: int, h: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(images):
        d = root / f"class{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{i:05d}.JPEG"
        photo_like(rng, w, h).save(p, quality=90)
        paths.append(p)
    return paths


def conventional_sample(path: Path, size: int, crop: int, rng: np.random.Generator) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    i, j = rng.integers(0, size - crop + 1, 2)
    img = img.crop((j, i, j + crop, i + crop))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)  # as torchvision to_tensor


def plain_pillow_decode(path: Path, size: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = min(w, h)
    box = ((w - short) // 2, (h - short) // 2, (w - short) // 2 + short, (h - short) // 2 + short)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box))


def _wh(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def run(args: argparse.Namespace) -> dict[str, Any]:
    malloc_tuned = tune_allocator()  # the CLI has done it already; a Python caller gets the same conditions
    torch.set_num_threads(1)  # per-core figures
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-loader-") as tmp:
        work = Path(args.workdir or tmp)
        tree = work / "tree"
        paths = make_tree(tree / "train", args.images, args.classes, *_wh(args.jpeg_size))
        big = make_tree(work / "big" / "train", args.decode_images, 1, *_wh(args.decode_size), seed=1)
        datas = {p: p.read_bytes() for p in big}

        decode = alternate({
            "pillow": lambda: [plain_pillow_decode(p, args.size) for p in big],
            "alexnet": lambda: [decode_image(datas[p], args.size) for p in big],
        }, warmup=args.warmup, repeats=args.repeats)  # fmt: skip

        t0 = time.perf_counter()
        prep = prepare(str(tree), work / "store", PrepareOptions(size=args.size, workers=1, progress=False, overwrite=True))
        prepare_s = time.perf_counter() - t0
        store = open_store(work / "store" / "train")
        loader = Loader(store, args.batch_size, workers=0, seed=0, pin_memory=False)
        transform = TrainTransform.for_training(store, DataConfig(crop=args.crop, mean="none", lighting=0.1))
        rng = np.random.default_rng(0)
        n_store = args.batch_size * min(args.store_batches, len(loader))
        n_conv = args.batch_size

        def store_pipeline() -> None:
            for step, (x, _) in enumerate(loader.epoch_batches(0, start=len(loader) - n_store // args.batch_size)):
                transform(x, 0, step)

        def conventional() -> None:
            order = rng.permutation(len(paths))[:n_conv]
            torch.stack([conventional_sample(paths[k], args.size, args.crop, rng) for k in order])

        cpu0 = time.process_time()
        loader_stats = alternate({"conventional": conventional, "store": store_pipeline},
                                 warmup=args.warmup, repeats=args.repeats)  # fmt: skip
        cpu_s = time.process_time() - cpu0
    conv_rate = n_conv / loader_stats["conventional"]["median_s"]
    store_rate = n_store / loader_stats["store"]["median_s"]
    return {
        "benchmark": "data pipeline (one core)",
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "bench_module")},
        "malloc_tuned": malloc_tuned,
        "decode": {"results": decode, "images": len(big), "size": args.decode_size,
                   "pillow_images_per_s": len(big) / decode["pillow"]["median_s"],
                   "alexnet_images_per_s": len(big) / decode["alexnet"]["median_s"],
                   "speedup": decode["pillow"]["median_s"] / decode["alexnet"]["median_s"]},  # fmt: skip
        "prepare": {"images": prep["splits"]["train"]["count"], "seconds": prepare_s,
                    "images_per_s": prep["splits"]["train"]["count"] / prepare_s, "jpeg_size": args.jpeg_size},  # fmt: skip
        "loader": {"results": loader_stats, "conventional_images_per_s": conv_rate, "store_images_per_s": store_rate,
                   "ratio": store_rate / conv_rate, "store_images_per_timed_call": n_store,
                   "conventional_images_per_timed_call": n_conv, "process_cpu_s": cpu_s},  # fmt: skip
        "env": environment(),
    }


def format_result(r: dict[str, Any]) -> str:
    d, p, lo, s = r["decode"], r["prepare"], r["loader"], r["settings"]
    return "\n".join([
        f"Data pipeline on one core (torch threads 1), malloc tuned: {r['malloc_tuned']}",
        f"  decode {d['size']} JPEG -> {s['size']}: Pillow {d['pillow_images_per_s']:.0f} img/s, "
        f"alexnet (DCT-domain scaling) {d['alexnet_images_per_s']:.0f} img/s, speed-up {d['speedup']:.2f}x",
        f"  prepare {p['images']} {p['jpeg_size']} JPEGs -> {s['size']} store: {p['images_per_s']:.0f} img/s (1 worker)",
        f"  conventional (Pillow decode + resize + crop + flip + to tensor): {lo['conventional_images_per_s']:.0f} img/s",
        f"  store loader + crop {s['crop']} + flip + PCA lighting:            {lo['store_images_per_s']:.0f} img/s",
        f"  ratio {lo['ratio']:.1f}x (medians of {s['repeats']} alternating repeats, batch {s['batch_size']})",
        f"  torch {r['env']['torch']}, {r['env']['cpu_count']} cpus, commit {r['env']['git_commit']}, {r['env']['date']}",
    ])  # fmt: skip
