"""The paper's claims (sections 3.1, 3.3, 3.4, 4.1, 4.2, 7) as seeded experiments on real data.

Each experiment trains every arm with every seed through the real entry point
(`alexnet.train.train` with a `TrainConfig` from `load_config`), evaluates each final
checkpoint on the test split and on a fixed sample of the training split (eval mode: no dropout,
no augmentation), and writes

    RESULTS/<name>/results.json   every run's numbers, mean +- std per arm, paired differences
    RESULTS/<name>/table.md       the table for docs/reproduction.md, with the command
    RESULTS/<name>/plot.png       training error against epoch per arm, and the final errors
    RESULTS/<name>/runs/<arm>-seed<s>/   the run folders (a finished run is reused on re-runs)

All arms share one recipe (below) chosen once, before any arm was run; nothing is tuned per arm
or toward the paper's numbers. Seeds pair the arms: seed s gives the same data order and
augmentation in every arm.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig, load_config
from ..data import Store, open_dataset
from ..data.loader import balanced_subset
from ..errors import ConfigError, DataError
from ..evaluate import evaluate_batches
from ..files import write_text_atomic
from ..figures import _plt, _save
from ..inference import Predictor
from ..runtime import environment
from ..train import train
from ..train.rundir import RunDir

# The shared recipe: the paper's update rule, momentum, weight decay and initial lr (section 5),
# batch 128, held constant (short runs never reach the paper's plateau drops); random +-2 px
# translations and flips (section 4.1's crops, scaled to 28-32 px images); per-channel
# standardisation. Kaiming init for alexnet-small: the paper's N(0, 0.01) with bias 1 starts
# flat in short runs (PAPER.md section 5), which would make every arm look alike.
BASE = (
    "optim.name=paper-sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.weight_decay=0.0005",
    "optim.schedule=constant", "batch_size=128", "data.pad=2", "data.flip=true", "data.lighting=0.0",
    "data.mean=channel", "data.divide_std=true", "checkpoint_every=100000",
)  # fmt: skip
SMALL = ("model.arch=alexnet-small", "model.options.init=kaiming")
CONV_LOCAL = ("model.arch=conv-local",)


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str  # what the paper says, with its section
    base: tuple[str, ...]  # overrides for every arm (on top of BASE)
    arms: dict[str, tuple[str, ...]]  # arm label -> its own overrides; the first arm is the reference
    epochs: int  # default number of epochs
    needs_rgb: bool = False


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("relu-vs-tanh", "Fig. 1 (3.1): the four-layer net reaches 25% training error on CIFAR-10 six times "
               "faster (in epochs) with ReLU than with tanh", CONV_LOCAL,
               {"relu": (), "tanh": ("model.options.activation=tanh",)}, epochs=2),
    Experiment("lrn", "3.3: response normalization takes the four-layer net from 13% to 11% test error on CIFAR-10",
               CONV_LOCAL, {"lrn": (), "no-lrn": ("model.options.lrn=false",)}, epochs=2),
    Experiment("overlap", "3.4: overlapping 3x3/2 pooling instead of 2x2/2 lowers top-1 error by 0.4% and makes the "
               "net slightly harder to overfit", SMALL,
               {"overlap-3x3/2": (), "plain-2x2/2": ("model.options.pooling=non-overlap",)}, epochs=2),
    Experiment("dropout", "4.2: without dropout the net overfits substantially (train/test gap)", SMALL,
               {"dropout-0.5": (), "no-dropout": ("model.options.dropout=0.0",)}, epochs=2),
    Experiment("pca-lighting", "4.1: PCA colour (lighting) augmentation lowers top-1 error by over 1%", SMALL,
               {"lighting-0.1": ("data.lighting=0.1",), "no-lighting": ()}, epochs=2, needs_rgb=True),
    Experiment("depth", "7: removing any middle conv layer costs about 2% top-1", SMALL,
               {"full": (), **{f"no-{c}": (f"model.options.drop_layer={c}",) for c in ("conv2", "conv3", "conv4", "conv5")}},
               epochs=2),
]}  # fmt: skip
THRESHOLDS = (0.25, 0.15, 0.10)  # training-error levels for relu-vs-tanh: the paper's 25% and two harder ones


def list_experiments() -> list[str]:
    return list(EXPERIMENTS)


def _get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _batches(store: Store, indices: np.ndarray, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for s in range(0, len(indices), batch_size):
        idx = indices[s : s + batch_size]
        yield torch.from_numpy(store.read(idx)).permute(0, 3, 1, 2), torch.from_numpy(store.labels[idx])


def evaluate_run(run_dir: Path, splits: dict[str, Store], train_eval: int) -> dict[str, float]:
    """Top-1 error of the run's last checkpoint on the test split and on `train_eval` of the images it
    trained on (drawn from its `data.train_subset` when it used one)."""
    predictor = Predictor.load(run_dir / "last.pt", device="cpu")
    train, test = splits["train"], splits.get("test") or splits.get("val")
    subset_size = predictor.checkpoint["train_state"]["config"]["data"].get("train_subset", 0)
    pool = balanced_subset(train.labels, subset_size) if subset_size else np.arange(len(train))
    sample = np.sort(np.random.default_rng(0).choice(pool, min(train_eval, len(pool)), replace=False))
    out: dict[str, float] = {}
    for key, store, idx in (("test_error", test, np.arange(len(test))), ("train_error", train, sample)):
        r = evaluate_batches(predictor.model, _batches(store, idx), predictor.views(), train.num_classes, predictor.device)
        out[key] = r.top1_error
    out["gap"] = out["test_error"] - out["train_error"]
    out["train_images"] = len(sample)
    return out


def epochs_to(metrics: Sequence[dict[str, Any]], threshold: float) -> float | None:
    """First epoch at which the running training error (per log interval) is at or below `threshold`."""
    for m in metrics:
        if "train_error" in m and m["train_error"] <= threshold:
            return float(m["epoch"])
    return None


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "std": None, "n": 0, "missing": len(values)}
    return {"mean": float(np.mean(got)), "std": float(np.std(got, ddof=1)) if len(got) > 1 else 0.0, "n": len(got),
            "missing": len(values) - len(got)}  # fmt: skip


def run_experiment(
    name: str,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] = "results",
    *,
    seeds: int = 3,
    epochs: int | None = None,
    max_steps: int = 0,
    overrides: Sequence[str] = (),
    train_eval: int = 10_000,
    command: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every arm of experiment `name` with seeds 0..seeds-1 and write results.json, table.md, plot.png."""
    exp = _get(name)
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    epochs = epochs or exp.epochs
    splits = open_dataset(data)
    if "train" not in splits or not ({"test", "val"} & set(splits)):
        raise DataError(f"{data} needs a train split and a test (or val) split; found {', '.join(splits)}")
    store = splits["train"]
    if exp.needs_rgb and store.channels != 3:
        raise DataError(f"{name} needs RGB images (PCA of the RGB pixel covariance, section 4.1); {data} has "
                        f"{store.channels}-channel images. Use CIFAR-10 (alexnet prepare cifar10:PATH) or a "
                        "synthetic RGB source (alexnet prepare synthetic:channels=3)")  # fmt: skip
    shared = [*BASE, *exp.base, f"data.crop={store.size}", f"epochs={epochs}", f"max_steps={max_steps}",
              f"eval_every={epochs}"]  # fmt: skip
    probe = load_config(None, None, [*shared, *overrides])
    steps_per_epoch = max(1, (probe.data.train_subset or len(store)) // probe.batch_size)
    shared.append(f"log_every={max(1, steps_per_epoch // 25)}")  # ~25 points per epoch on the training curve
    root = Path(out) / name
    results: dict[str, Any] = {"experiment": name, "claim": exp.claim, "data": str(data), "epochs": epochs,
                               "max_steps": max_steps, "seeds": seeds, "train_eval": train_eval,
                               "overrides": [*shared, *overrides], "arms": {}}  # fmt: skip
    t_all = time.perf_counter()
    for arm, arm_over in exp.arms.items():
        runs = []
        for seed in range(seeds):
            run_dir = root / "runs" / f"{arm.replace('/', '_')}-seed{seed}"
            if log and not (run_dir / "result.json").is_file():
                log(f"{name}: {arm}, seed {seed} ({epochs} epochs{f', at most {max_steps} steps' if max_steps else ''})")
            cfg = load_config(None, None, [*shared, *arm_over, *overrides, f"seed={seed}"])
            runs.append(_run_seed(cfg, data, run_dir, splits, train_eval, progress))
        summary = {k: _summary([r[k] for r in runs]) for k in ("test_error", "train_error", "gap")}
        summary.update({f"epochs_to_{t}": _summary([r["epochs_to"][str(t)] for r in runs]) for t in THRESHOLDS})
        results["arms"][arm] = {"overrides": list(arm_over), "runs": runs, "summary": summary}
    results["paired"] = _paired(results)
    results["env"] = environment("cpu" if "device=cuda" not in " ".join(overrides) else "cuda")
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    results["command"] = command or _command(name, data, out, seeds, epochs, max_steps, train_eval, overrides)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (root / "table.md").write_text(format_table(results) + "\n")
    plot_experiment(results, root / "plot.png")
    return results


def _run_seed(cfg: TrainConfig, data: str | os.PathLike[str], run_dir: Path, splits: dict[str, Store], train_eval: int,
              progress: bool) -> dict[str, Any]:  # fmt: skip
    """Train one arm with one seed (resuming a killed run, reusing a finished one) and measure it."""
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    fit = train(cfg, data, run_dir, resume=(run_dir / "last.pt").is_file(), progress=progress)
    rec: dict[str, Any] = {"seed": cfg.seed, "steps": fit["step"], "seconds": round(time.perf_counter() - t0, 1)}
    rec.update(evaluate_run(run_dir, splits, train_eval))
    metrics = RunDir(run_dir).metrics()
    rec["epochs_to"] = {str(t): epochs_to(metrics, t) for t in THRESHOLDS}
    rec["curve"] = [(m["epoch"], m["train_error"]) for m in metrics if "train_error" in m]
    write_text_atomic(done, json.dumps(rec))
    return rec


def _paired(results: dict[str, Any]) -> dict[str, Any]:
    """Per arm, the difference from the reference (first) arm, seed by seed: mean +- std."""
    arms = list(results["arms"])
    ref = {r["seed"]: r for r in results["arms"][arms[0]]["runs"]}
    out: dict[str, Any] = {}
    for arm in arms[1:]:
        diffs = {}
        for key in ("test_error", "train_error", "gap"):
            diffs[key] = _summary([r[key] - ref[r["seed"]][key] for r in results["arms"][arm]["runs"] if r["seed"] in ref])
        out[arm] = diffs
    return out


def _command(name: str, data: Any, out: Any, seeds: int, epochs: int, max_steps: int, train_eval: int,
             overrides: Sequence[str]) -> str:  # fmt: skip
    parts = ["alexnet", "experiment", name, "--data", str(data), "--out", str(out), "--seeds", str(seeds),
             "--epochs", str(epochs)]  # fmt: skip
    if max_steps:
        parts += ["--max-steps", str(max_steps)]
    if train_eval != 10_000:
        parts += ["--train-eval", str(train_eval)]
    return shlex.join(parts + (["--set", *overrides] if overrides else []))


def _pm(s: dict[str, Any], scale: float = 100.0, unit: str = "%") -> str:
    if s["mean"] is None:
        return "not reached"
    text = f"{scale * s['mean']:.2f} +- {scale * s['std']:.2f}{unit}"
    return text + (f" ({s['missing']} of {s['n'] + s['missing']} not reached)" if s["missing"] else "")


def format_table(results: dict[str, Any]) -> str:
    """The experiment's markdown table: mean +- std over seeds per arm, and differences from the first arm."""
    name, arms = results["experiment"], results["arms"]
    seeds = results["seeds"]
    lines = [f"### {name}", "", f"Paper: {results['claim']}.", "",
             f"`{results['command']}`", ""]  # fmt: skip
    if name == "relu-vs-tanh":
        lines += ["| arm | " + " | ".join(f"epochs to {100 * t:.0f}% train error" for t in THRESHOLDS) + " | test error |",
                  "|---|" + "---|" * (len(THRESHOLDS) + 1)]  # fmt: skip
        for arm, a in arms.items():
            cells = [_pm(a["summary"][f"epochs_to_{t}"], 1.0, "") for t in THRESHOLDS]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_pm(a['summary']['test_error'])} |")
        ref, other = list(arms)[:2]
        ratios = []
        for t in THRESHOLDS:
            a, b = arms[ref]["summary"][f"epochs_to_{t}"]["mean"], arms[other]["summary"][f"epochs_to_{t}"]["mean"]
            ratios.append(f"{100 * t:.0f}%: {b / a:.2f}x" if a and b else f"{100 * t:.0f}%: n/a")
        lines += ["", f"{other} / {ref} epochs ratio (paper: 6x at 25% on CIFAR-10): " + ", ".join(ratios)]
    else:
        lines += ["| arm | test error | train error (eval mode) | gap (test - train) | test error vs first arm |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for i, (arm, a) in enumerate(arms.items()):
            s = a["summary"]
            diff = ""
            if i:
                d = results["paired"][arm]["test_error"]
                diff = f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f}%"
            lines.append(f"| {arm} | {_pm(s['test_error'])} | {_pm(s['train_error'])} | {_pm(s['gap'])} | {diff} |")
    env = results.get("env", {})
    lines += ["", f"{seeds} seed(s), {results['epochs']} epoch(s)"
              + (f", at most {results['max_steps']} steps" if results["max_steps"] else "")
              + f"; train error on {results['train_eval']} training images; {env.get('date', '?')[:10]}, "
              f"{env.get('processor', '?')} x{env.get('cpu_count', '?')}, torch {env.get('torch', '?')}, "
              f"commit {env.get('git_commit', '?')}, {results.get('seconds', 0) / 60:.1f} min."]  # fmt: skip
    return "\n".join(lines)


def plot_experiment(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Left: running training error against epoch (mean over seeds per arm). Right: final errors, mean +- std."""
    plt = _plt()
    fig, (ax_c, ax_b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    arms = results["arms"]
    for i, (arm, a) in enumerate(arms.items()):
        curves = [np.asarray(r["curve"], dtype=np.float64) for r in a["runs"] if r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        stack = np.stack([c[:n] for c in curves])
        x, y = stack[0, :, 0], 100 * stack[:, :, 1]
        ax_c.plot(x, y.mean(0), color=f"C{i}", label=arm, lw=1.5)
        if len(curves) > 1:
            ax_c.fill_between(x, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1), color=f"C{i}", alpha=0.2)
    if results["experiment"] == "relu-vs-tanh":
        for t in THRESHOLDS:
            ax_c.axhline(100 * t, color="grey", ls=":", lw=1)
    ax_c.set(xlabel="epoch", ylabel="training error (%), running", title="training error (mean +- std over seeds)")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    names = list(arms)
    pos = np.arange(len(names))
    for j, (key, label) in enumerate((("test_error", "test"), ("train_error", "train (eval mode)"))):
        means = [100 * (arms[a]["summary"][key]["mean"] or math.nan) for a in names]
        stds = [100 * (arms[a]["summary"][key]["std"] or 0.0) for a in names]
        ax_b.bar(pos + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=label, color=f"C{j + 3}")
    ax_b.set_xticks(pos, names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center", fontsize=8)
    ax_b.set(ylabel="top-1 error (%)", title="final errors")
    ax_b.grid(alpha=0.3, axis="y")
    ax_b.legend(fontsize=8)
    fig.suptitle(f"{results['experiment']}: {results['seeds']} seed(s), {results['epochs']} epoch(s)", fontsize=10)
    return _save(fig, out)
