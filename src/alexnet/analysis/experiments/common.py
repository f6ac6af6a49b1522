"""What every experiment shares: its definition, a run cache shared between experiments, the
measurements of a finished run, and mean +- std / paired-difference summaries.

A run is identified by its resolved training config and its data: two experiments whose arms
train the same config (the reference arm of most CIFAR-10 ablations is the same preset run)
share one run folder, RESULTS/runs/<arch>-<hash>, trained once. A killed run resumes from its
last checkpoint; a finished one (result.json) is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import TrainConfig, load_config
from ...data import Store, open_dataset
from ...data.loader import balanced_subset
from ...errors import AlexNetError, ConfigError, DataError
from ...evaluate import evaluate_batches
from ...files import write_text_atomic
from ...inference import Predictor
from ...runtime import environment, git_commit
from ...train import TrainingDiverged, train
from ...train.rundir import RunDir

Log = Callable[[str], None]
Job = tuple[str, int, tuple[str, ...], bool]  # a run a runner will ask for: arm, seed, extra settings, measure


@dataclass(frozen=True)
class Experiment:
    """One of the paper's claims as arms trained with seeds 0..n-1 and compared.

    preset: the training preset every arm starts from (None: only `base`); base: settings for every
    arm; arms: label -> its own settings (the first arm is the reference); epochs: the default
    length; kind: "arms" (test/train error per arm), "sweep" (Fig. 1), "towers" (Fig. 3) or
    "retrieval" (Fig. 4); paper: the paper's figure, for the summary table.
    """

    name: str
    claim: str
    paper: str
    preset: str | None
    base: tuple[str, ...]
    arms: dict[str, tuple[str, ...]]
    epochs: int
    kind: str = "arms"
    needs_rgb: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific: the lr grid, thresholds, ...
    presets: dict[str, str] = field(default_factory=dict)  # arm -> its own preset, in place of `preset`


@dataclass
class Context:
    """One invocation: where the data and results are, and the settings that apply to every arm."""

    exp: Experiment
    data: Path
    out: Path
    splits: dict[str, Store]
    seeds: int
    epochs: int
    max_steps: int
    overrides: tuple[str, ...]
    train_eval: int
    progress: bool
    log: Log | None
    jobs: int = 1
    started: float = field(default_factory=time.perf_counter)
    commit: str | None = None  # the code's commit when the experiment started (each run's env.json has its own)
    init: str | None = None  # every run starts from this trained net (`train --init`): see `on`

    @classmethod
    def open(cls, exp: Experiment, data: str | os.PathLike[str], out: str | os.PathLike[str], *, seeds: int,
             epochs: int | None, max_steps: int, overrides: Sequence[str], train_eval: int, progress: bool,
             log: Log | None, jobs: int = 1, init: str | None = None) -> Context:  # fmt: skip
        if seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {seeds}")
        if jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        splits = open_dataset(data)
        if "train" not in splits or not ({"test", "val"} & set(splits)):
            raise DataError(f"{data} needs a train split and a test (or val) split; found {', '.join(splits)}")
        if exp.needs_rgb and splits["train"].channels != 3:
            raise DataError(f"{exp.name} needs RGB images (it is a claim about colour); {data} has "
                            f"{splits['train'].channels}-channel images. Use CIFAR-10: alexnet prepare cifar10 OUT "
                            "(or the JPEG tree: alexnet prepare DIR OUT --val-fraction 0.1)")  # fmt: skip
        return cls(exp, Path(data), Path(out), splits, seeds, epochs or exp.epochs, max_steps, tuple(overrides),
                   train_eval, progress, log, jobs, commit=git_commit(), init=init)  # fmt: skip

    def on(self, data: str | os.PathLike[str], init: str | os.PathLike[str] | None = None) -> Context:
        """The same invocation on another prepared dataset, its runs started from `init` when given
        (the transfer experiment's halves of one store)."""
        ctx = Context.open(self.exp, data, self.out, seeds=self.seeds, epochs=self.epochs, max_steps=self.max_steps,
                           overrides=self.overrides, train_eval=self.train_eval, progress=self.progress, log=self.log,
                           jobs=self.jobs, init=None if init is None else str(init))  # fmt: skip
        ctx.started, ctx.commit = self.started, self.commit
        return ctx

    @property
    def train_store(self) -> Store:
        return self.splits["train"]

    def config(self, arm: str, seed: int, *extra: str) -> TrainConfig:
        """The resolved settings of one arm and seed: preset, the experiment's base, the arm's own, the
        caller's overrides, then ~25 log points per epoch (the training curves) and the seed."""
        items = [*self.exp.base, f"epochs={self.epochs}", f"max_steps={self.max_steps}", f"eval_every={self.epochs}",
                 "checkpoint_every=100000", *self.exp.arms[arm], *extra, *self.overrides]  # fmt: skip
        preset = self.exp.presets.get(arm, self.exp.preset)
        probe = load_config(preset, None, items)
        per_epoch = max(1, (probe.data.train_subset or len(self.train_store)) // probe.batch_size)
        return load_config(preset, None, [*items, f"log_every={max(1, per_epoch // 25)}", f"seed={seed}"])

    def run_dir(self, cfg: TrainConfig) -> Path:
        """The run's folder: named by its settings (those off TrainConfig's defaults), its data and its init."""
        ident = [_changed(cfg), str(self.data.resolve())] + ([str(Path(self.init).resolve())] if self.init else [])
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        return self.out / "runs" / f"{cfg.model.arch}-seed{cfg.seed}-{key[:12]}"

    def finished(self, cfg: TrainConfig, measure: bool) -> bool:
        """Whether `run(cfg, ..., measure)` would only read what is on disk."""
        done = self.run_dir(cfg) / "result.json"
        return done.is_file() and not _unmeasured(json.loads(done.read_text()), measure)

    def arm_runs(self) -> list[Job]:
        """Every arm with every seed, measured: what the arms, towers and retrieval runners train."""
        return [(arm, seed, (), True) for arm in self.exp.arms for seed in range(self.seeds)]

    def prefetch(self, jobs: Sequence[Job]) -> None:
        """Train the runs a runner is about to ask for, `self.jobs` at a time, so that its `run`
        calls find them finished. Each goes to a worker process (`python -m
        alexnet.analysis.experiments.worker`, the same `run` on the same settings) with threads/jobs
        threads, so on a CPU the runs go side by side instead of one after another. With jobs=1
        this does nothing and `run` trains each in turn. A failed worker's run resumes on the next
        invocation; the others finish first."""
        prefetch([(self, job) for job in jobs])

    def spec(self, job: Job, threads: int) -> dict[str, Any]:
        """What the worker process needs to open this context and train `job` (worker.py)."""
        return {"name": self.exp.name, "data": str(self.data), "out": str(self.out), "seeds": self.seeds,
                "epochs": self.epochs, "max_steps": self.max_steps, "overrides": list(self.overrides),
                "train_eval": self.train_eval, "arm": job[0], "seed": job[1], "extra": list(job[2]), "measure": job[3],
                "label": " ".join((job[0], *job[2])), "threads": threads, "log": self.log is not None, "init": self.init}  # fmt: skip


    def run(self, cfg: TrainConfig, label: str, measure: bool = True) -> dict[str, Any]:
        """Train `cfg` (or reuse its finished run) and measure it: the training curve, and with
        `measure` the test error and the train error in eval mode. The record names its run folder."""
        run_dir = self.run_dir(cfg)
        done = run_dir / "result.json"
        if done.is_file():
            rec = json.loads(done.read_text())
            if _unmeasured(rec, measure):  # trained for a sweep, wanted now
                rec.update(measure_run(run_dir, self.splits, self.train_eval))
                write_text_atomic(done, json.dumps(rec))
            return rec
        if self.log:
            self.log(f"{self.exp.name}: {label}, seed {cfg.seed} ({cfg.epochs} epochs; {run_dir})")
        t0 = time.perf_counter()
        resume = (run_dir / "last.pt").is_file()
        init = {"init": self.init} if self.init and not resume else {}  # a resumed run keeps its init's record
        try:
            fit = train(cfg, self.data, run_dir, resume=resume, progress=self.progress, **init)
            steps, diverged = fit["step"], False
        except TrainingDiverged:  # a learning rate too high for the net: a result of a sweep, not an error
            steps, diverged = None, True
        metrics = RunDir(run_dir).metrics()
        rec: dict[str, Any] = {"seed": cfg.seed, "run": str(run_dir), "steps": steps, "diverged": diverged,
                               "seconds": round(time.perf_counter() - t0, 1),
                               "curve": [[m["epoch"], m["train_error"]] for m in metrics if "train_error" in m]}  # fmt: skip
        if measure and not diverged:
            rec.update(measure_run(run_dir, self.splits, self.train_eval))
        write_text_atomic(done, json.dumps(rec))
        return rec

    def finish(self, results: dict[str, Any], command_extra: Sequence[str] = ()) -> dict[str, Any]:
        results.setdefault("experiment", self.exp.name)
        results.setdefault("claim", self.exp.claim)
        results.setdefault("paper", self.exp.paper)
        results.update(data=str(self.data), epochs=self.epochs, max_steps=self.max_steps, seeds=self.seeds,
                       train_eval=self.train_eval, overrides=list(self.overrides),
                       env={**environment("cuda" if "device=cuda" in " ".join(self.overrides) else "cpu"),
                            "git_commit": self.commit},
                       seconds=round(time.perf_counter() - self.started, 1), command=self.command(command_extra))  # fmt: skip
        return results

    def command(self, extra: Sequence[str] = ()) -> str:
        parts = ["alexnet", "experiment", self.exp.name, "--data", str(self.data), "--out", str(self.out),
                 "--seeds", str(self.seeds), "--epochs", str(self.epochs), *extra]  # fmt: skip
        if self.max_steps:
            parts += ["--max-steps", str(self.max_steps)]
        if self.train_eval != 10_000:
            parts += ["--train-eval", str(self.train_eval)]
        return shlex.join(parts + (["--set", *self.overrides] if self.overrides else []))


def prefetch(work: Sequence[tuple[Context, Job]]) -> None:
    """`Context.prefetch` for runs of several contexts (one experiment on several datasets) at once."""
    todo = [(ctx, job) for ctx, job in work if not ctx.finished(ctx.config(job[0], job[1], *job[2]), job[3])]
    if not todo or todo[0][0].jobs <= 1:
        return
    first = todo[0][0]
    threads = max(1, torch.get_num_threads() // first.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def one(item: tuple[Context, Job]) -> tuple[Job, int]:
        ctx, job = item
        return job, subprocess.run([sys.executable, "-m", "alexnet.analysis.experiments.worker",
                                    json.dumps(ctx.spec(job, threads))], env=env).returncode  # fmt: skip

    if first.log:
        first.log(f"{first.exp.name}: {len(todo)} run(s) to train, {first.jobs} at a time at {threads} thread(s) each")
    with ThreadPoolExecutor(first.jobs) as pool:
        failed = [(job, rc) for job, rc in pool.map(one, todo) if rc != 0]
    if failed:
        (arm, seed, _, _), rc = failed[0]
        raise AlexNetError(f"{len(failed)} of {len(todo)} worker run(s) failed, the first {arm!r} seed {seed} with exit "
                           f"status {rc} (its output is above); run the experiment again to resume them")  # fmt: skip


def _unmeasured(rec: dict[str, Any], measure: bool) -> bool:
    """A finished run's record lacks the test and train errors that are wanted of it."""
    return measure and not rec["diverged"] and "test_error" not in rec


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _changed(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that differ from TrainConfig's defaults: a run's identity, which a setting added
    to the project later (at its default) does not change."""
    default = _flat(TrainConfig().to_dict())
    return {k: v for k, v in _flat(cfg.to_dict()).items() if default.get(k, object()) != v}


def _batches(store: Store, indices: np.ndarray, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for s in range(0, len(indices), batch_size):
        idx = indices[s : s + batch_size]
        yield torch.from_numpy(store.read(idx)).permute(0, 3, 1, 2), torch.from_numpy(store.labels[idx])


def measure_run(run_dir: Path, splits: dict[str, Store], train_eval: int) -> dict[str, float]:
    """Top-1 error of the run's last checkpoint on the test split (with the run's validation views)
    and, in eval mode, on `train_eval` of the images it trained on."""
    predictor = Predictor.load(run_dir / "last.pt", device="cpu")
    data_cfg = predictor.checkpoint["train_state"]["config"]["data"]
    views = "ten-crop" if data_cfg.get("ten_crop_eval") else "flip" if data_cfg.get("flip_eval") else "center"
    train_store, test = splits["train"], splits.get("test") or splits["val"]
    subset = data_cfg.get("train_subset", 0)
    pool = balanced_subset(train_store.labels, subset, data_cfg.get("train_subset_seed", 0)) if subset else np.arange(len(train_store))
    sample = np.sort(np.random.default_rng(0).choice(pool, min(train_eval, len(pool)), replace=False))
    out: dict[str, float] = {}
    for key, store, idx, mode in (("test_error", test, np.arange(len(test)), views), ("train_error", train_store, sample, "center")):
        r = evaluate_batches(predictor.model, _batches(store, idx), predictor.views(mode), predictor.num_classes, predictor.device)
        out[key] = r.top1_error
    out["gap"] = out["test_error"] - out["train_error"]
    out["train_images"] = len(sample)
    return out


def epochs_to(curve: Sequence[Sequence[float]] | Sequence[dict[str, Any]], threshold: float) -> float | None:
    """First epoch at which the running training error (per log interval) is at or below `threshold`."""
    for point in curve:
        epoch, error = (point["epoch"], point.get("train_error")) if isinstance(point, dict) else point
        if error is not None and error <= threshold:
            return float(epoch)
    return None


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """mean +- std (ddof 1) of the values given; None counts as missing (not reached, diverged)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "std": None, "n": 0, "missing": len(values)}
    return {"mean": float(np.mean(got)), "std": float(np.std(got, ddof=1)) if len(got) > 1 else 0.0, "n": len(got),
            "missing": len(values) - len(got)}  # fmt: skip


def paired(arms: dict[str, dict[str, Any]], keys: Sequence[str] = ("test_error", "train_error", "gap")) -> dict[str, Any]:
    """Per arm, its difference from the reference (first) arm, seed by seed: mean +- std."""
    names = list(arms)
    ref = {r["seed"]: r for r in arms[names[0]]["runs"]}
    return {arm: {k: summary([r.get(k) - ref[r["seed"]].get(k) if r.get(k) is not None and ref.get(r["seed"], {}).get(k)
                              is not None else None for r in arms[arm]["runs"]]) for k in keys}
            for arm in names[1:]}  # fmt: skip


def pm(s: dict[str, Any], scale: float = 100.0, unit: str = "%", digits: int = 2) -> str:
    """"mean +- std" of a summary, or why there is none."""
    if s["mean"] is None:
        return "not reached"
    text = f"{scale * s['mean']:.{digits}f} +- {scale * s['std']:.{digits}f}{unit}"
    return text + (f" ({s['missing']} of {s['n'] + s['missing']} not reached)" if s["missing"] else "")


def header(results: dict[str, Any]) -> list[str]:
    """The lines above every table: the experiment, the paper's claim, the command that made it."""
    return [f"### {results['experiment']}", "", f"Paper: {results['claim']}.", "", f"`{results['command']}`", ""]


def footer(results: dict[str, Any]) -> str:
    """The line under every table: seeds, length, date, machine, commit, compute time."""
    env = results.get("env", {})
    return (f"{results['seeds']} seed(s), {results['epochs']} epoch(s)"
            + (f", at most {results['max_steps']} steps" if results["max_steps"] else "")
            + f"; {env.get('date', '?')[:10]}, {_cpu(env)} x{env.get('cpu_count', '?')}, "
            f"torch {env.get('torch', '?')}, commit {env.get('git_commit', '?')}, {results.get('seconds', 0) / 60:.1f} min.")  # fmt: skip


def _cpu(env: dict[str, Any]) -> str:
    """The CPU of an environment record: model, ISA and whether bf16 is native (older records: the processor)."""
    cpu = env.get("cpu")
    if not isinstance(cpu, dict):
        return str(env.get("processor", "?"))
    return f"{cpu.get('model', '?')} ({cpu.get('isa', '?')}, {'native' if cpu.get('native_bf16') else 'no native'} bf16)"


def write_outputs(out: Path, results: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(out / "table.md", table + "\n")
