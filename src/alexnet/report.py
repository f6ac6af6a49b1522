"""RUN_DIR/report.md: the run's numbers and figures in one page.

The headline figure is the final checkpoint evaluated on the test split exactly as `alexnet
evaluate` does it (fp32, the run's validation views), so the report and the command agree to
the digit; the validation by epoch below it is what training saw (in its own precision).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from . import figures
from .data import open_dataset
from .files import write_text_atomic
from .evaluate import EvalResult, evaluate_store
from .inference import Predictor
from .train.rundir import RunDir


def _view_mode(data_cfg: dict[str, Any]) -> str:
    return "ten-crop" if data_cfg.get("ten_crop_eval") else "flip" if data_cfg.get("flip_eval") else "center"


def write_report(run_dir: str | os.PathLike[str], *, device: str = "auto") -> Path:
    """Write report.md and its figures (figures/*.png) from the run folder's metrics and final checkpoint."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    metrics = run.metrics()
    fig_dir = run.path / "figures"
    ckpt_path = run.best if run.best.is_file() else run.last
    predictor = Predictor.load(ckpt_path, device=device)
    env = json.loads((run.path / "env.json").read_text()) if (run.path / "env.json").is_file() else {}
    splits = open_dataset(cfg["data_path"])
    split = "test" if "test" in splits else cfg.get("data", {}).get("val_split", "val")
    views = _view_mode(cfg.get("data", {}))
    final: EvalResult | None = evaluate_store(predictor, splits[split], views=views) if split in splits else None

    made: dict[str, Path] = {"curves": figures.training_curves(metrics, fig_dir / "training_curves.png", title=predictor.arch)}
    if final is not None:
        made["confusion"] = figures.confusion_matrix(final.confusion, predictor.class_names, fig_dir / "confusion.png")
        images, top, truth = predictor.sample(splits[split], 16, seed=0)
        made["predictions"] = figures.predictions_grid(images, top, fig_dir / "predictions.png", truth=truth)
    weight, towers = predictor.conv1()
    made["kernels"] = figures.conv1_kernels(weight, fig_dir / "conv1_kernels.png", towers=towers)

    lines = [f"# Run report: {predictor.arch} on {cfg.get('data_path', '?')}", ""]
    if final is not None:
        flag = {"flip": " --flip", "ten-crop": " --ten-crop"}.get(views, "")
        command = f"alexnet evaluate --checkpoint {shlex.quote(str(ckpt_path))} --data {shlex.quote(str(cfg['data_path']))} --split {split}{flag}"
        lines += [
            "| metric | value |", "|---|---|",
            f"| {split} images | {final.n} ({views} view(s)) |",
            f"| top-1 accuracy | {100 * (1 - final.top1_error):.2f}% |",
            f"| top-1 error | {100 * final.top1_error:.2f}% |",
            f"| top-5 error | {100 * final.top5_error:.2f}% |",
        ]  # fmt: skip
    lines += _training_rows(run, metrics, ckpt_path)
    if final is not None:
        lines += ["", f"The {split} figures are `{command}` (fp32)."]
    init = env.get("init")
    if init:
        frozen = f" Frozen through {cfg['freeze']}." if cfg.get("freeze") else ""
        lines += ["", f"Initialised from `{init['source']}` ({init['arch']}): {init['loaded']} weight tensors loaded; "
                  f"from the init: {init['fresh_layers']}; normalisation: the {init['normalisation']}'s.{frozen}"]  # fmt: skip
    lines += ["", f"Checkpoint: `{ckpt_path.name}`. Device: {env.get('device', '?')}, torch {env.get('torch', '?')}, "
              f"commit {env.get('git_commit', '?')}.", ""]  # fmt: skip
    lines += _validation_table(metrics)
    titles = {"curves": "Training curves", "confusion": f"Confusion matrix ({split})",
              "predictions": f"{split.capitalize()} images and their top-5 predictions (true class in green)",
              "kernels": f"conv1 kernels (Fig. 3){', tower by tower' if towers > 1 else ''}"}  # fmt: skip
    for key, path in made.items():
        lines += [f"## {titles[key]}", "", f"![{key}]({path.relative_to(run.path)})", ""]
    if final is not None:
        lines += [f"## Per-class accuracy ({split})", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {n} | {100 * a:.2f}% |" for n, a in zip(predictor.class_names, final.per_class_accuracy)]
        lines.append("")
    lines += ["## Settings", "", "```yaml", (run.path / "config.yaml").read_text().rstrip(), "```", ""]
    out = run.path / "report.md"
    write_text_atomic(out, "\n".join(lines))
    return out


def _training_rows(run: RunDir, metrics: list[dict[str, Any]], ckpt_path: Path) -> list[str]:
    rows = []
    val = [m for m in metrics if "val_top1_error" in m]
    if ckpt_path == run.best and val:
        best = min(val, key=lambda m: m["val_top1_error"])
        rows.append(f"| checkpoint | best.pt: epoch {best['epoch']}, chosen on {best.get('split', 'val')} |")
    elif val:
        rows.append(f"| checkpoint | last.pt: epoch {val[-1]['epoch']} (nothing selected) |")
    ips = [m["images_per_s"] for m in metrics if "images_per_s" in m]
    if ips:
        rows.append(f"| training throughput (median of intervals) | {float(np.median(ips)):.0f} images/s |")
    stamps = [m["time"] for m in metrics if "time" in m]
    if len(stamps) >= 2:
        rows.append(f"| training wall time | {stamps[-1] - stamps[0]:.0f} s |")
    return rows


def _validation_table(metrics: list[dict[str, Any]]) -> list[str]:
    val = [m for m in metrics if "val_top1_error" in m]
    if not val:
        return []
    split = val[-1].get("split", "val")
    lines = [f"## Validation by epoch ({split}, during training)", "",
             "| epoch | top-1 error | top-5 error | loss | lr |", "|---|---|---|---|---|"]  # fmt: skip
    for m in val:
        lines.append(f"| {m['epoch']} | {100 * m['val_top1_error']:.2f}% | {100 * m['val_top5_error']:.2f}% | "
                     f"{m['val_loss']:.4f} | {m['lr']:.3g}{' (dropped)' if m.get('lr_dropped') else ''} |")  # fmt: skip
    return lines + [""]
