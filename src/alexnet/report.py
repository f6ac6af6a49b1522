"""RUN_DIR/report.md: the run's numbers and figures in one page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import figures
from .checkpoint import load_checkpoint
from .train.rundir import RunDir


def _sample_predictions(run: RunDir, ckpt_path: Path, count: int = 16) -> tuple[list[np.ndarray], list, list[str]] | None:
    """A fixed sample of validation images with the model's top-5 (for the report's grid)."""
    from .evaluate import open_split, predict_probs
    from .predict import Predictor

    cfg = run.read_config()
    try:
        store = open_split(cfg["data_path"], cfg.get("data", {}).get("val_split"))
    except Exception:
        return None
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(store), size=min(count, len(store)), replace=False))
    images = store.read(idx)  # (B, H, W, C) uint8
    pred = Predictor(ckpt_path, views="center")
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    probs = predict_probs(pred.model, pred.views(batch))
    k = min(5, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    top = [[(pred.class_names[j], p) for j, p in zip(i, v)] for i, v in zip(indices.tolist(), values.tolist())]
    truth = [store.class_names[int(store.labels[i])] for i in idx]
    return list(images), top, truth


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write report.md and its figures (figures/*.png) from the run folder's metrics and checkpoints."""
    run = RunDir(run_dir)
    metrics = run.metrics()
    fig_dir = run.path / "figures"
    ckpt_path = run.best if run.best.is_file() else run.last
    ckpt = load_checkpoint(ckpt_path)
    cfg = run.read_config()
    env = json.loads((run.path / "env.json").read_text()) if (run.path / "env.json").is_file() else {}
    val = (ckpt.get("meta") or {}).get("validation")
    made: dict[str, Path] = {"curves": figures.training_curves(metrics, fig_dir / "training_curves.png", title=ckpt["arch"])}
    if val:
        made["confusion"] = figures.confusion_matrix(val["confusion"], ckpt["class_names"], fig_dir / "confusion.png")
    conv1 = next((v for k, v in ckpt["state_dict"].items() if k.endswith("conv1.weight") or k == "features.0.weight"), None)
    if conv1 is not None:
        groups = 2 if ckpt["arch"] in ("alexnet", "caffenet", "alexnet-small") else 1
        made["kernels"] = figures.conv1_kernels(conv1, fig_dir / "conv1_kernels.png", towers=groups)
    sample = _sample_predictions(run, ckpt_path)
    if sample is not None:
        made["predictions"] = figures.predictions_grid(sample[0], sample[1], fig_dir / "predictions.png", truth=sample[2])

    train_recs = [m for m in metrics if "images_per_s" in m]
    val_recs = [m for m in metrics if "val_top1_error" in m]
    lines = [f"# Run report: {ckpt['arch']} on {cfg.get('data_path', '?')}", ""]
    if val:
        lines += [
            "| metric | value |", "|---|---|",
            f"| validation images | {val['n']} ({val['views']} view(s)) |",
            f"| top-1 accuracy | {100 * (1 - val['top1_error']):.2f}% |",
            f"| top-1 error | {100 * val['top1_error']:.2f}% |",
            f"| top-5 error | {100 * val['top5_error']:.2f}% |",
            f"| best epoch | {val_recs[[v['val_top1_error'] for v in val_recs].index(min(v['val_top1_error'] for v in val_recs))]['epoch'] if val_recs else '?'} |",
        ]  # fmt: skip
    if train_recs:
        ips = [m["images_per_s"] for m in train_recs]
        lines.append(f"| training throughput (median of intervals) | {float(np.median(ips)):.0f} images/s |")
    elapsed = _elapsed(run)
    if elapsed is not None:
        lines.append(f"| training wall time | {elapsed:.0f} s |")
    lines += ["", f"Checkpoint: `{ckpt_path.name}`. Device: {env.get('device', '?')}, torch {env.get('torch', '?')}, "
              f"commit {env.get('git_commit', '?')}.", ""]  # fmt: skip
    if val_recs:
        lines += ["## Validation by epoch", "", "| epoch | top-1 error | top-5 error | loss | lr |", "|---|---|---|---|---|"]
        for m in val_recs:
            lines.append(f"| {m['epoch']} | {100 * m['val_top1_error']:.2f}% | {100 * m['val_top5_error']:.2f}% | "
                         f"{m['val_loss']:.4f} | {m['lr']:.3g}{' (dropped)' if m.get('lr_dropped') else ''} |")  # fmt: skip
        lines.append("")
    titles = {"curves": "Training curves", "confusion": "Confusion matrix", "kernels": "conv1 kernels (Fig. 3)",
              "predictions": "Validation images and their top-5 predictions (true class in green)"}  # fmt: skip
    for key, path in made.items():
        lines += [f"## {titles[key]}", "", f"![{key}]({path.relative_to(run.path)})", ""]
    if val:
        lines += ["## Per-class accuracy", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {n} | {100 * a:.2f}% |" for n, a in zip(ckpt["class_names"], val["per_class_accuracy"])]
        lines.append("")
    lines += ["## Settings", "", "```yaml", (run.path / "config.yaml").read_text().rstrip(), "```", ""]
    out = run.path / "report.md"
    out.write_text("\n".join(lines))
    return out


def _elapsed(run: RunDir) -> float | None:
    """Wall time of training from the metrics file's timestamps, when present."""
    stamps = [m["time"] for m in run.metrics() if "time" in m]
    return stamps[-1] - stamps[0] if len(stamps) >= 2 else None

