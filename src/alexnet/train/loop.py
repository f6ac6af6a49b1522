"""The training loop: the paper's recipe end to end, resumable to the exact step.

Exact resume: the data order depends only on (seed, epoch), the augmentation of step s only
on (seed, s) (data/augment.py says how), and the checkpoint holds model, optimizer velocity,
schedule, epoch, batch, step and the global RNG (dropout). A run killed at any moment and
resumed from `last.pt` therefore repeats exactly the steps since that checkpoint and ends with
the same weights.

Validation: on `data.val_split` (default "val", held out from train by `prepare
--val-fraction`), which keeps `best.pt` and drives the plateau schedule. A dataset without it
is validated on its test split for the curves only: nothing is selected on the test split.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import atomic_save, load_checkpoint, make_checkpoint, preprocess_of
from ..config import TrainConfig, config_from_dict
from ..data import Store, open_dataset
from ..data.loader import Loader, balanced_subset
from ..errors import AlexNetError, CheckpointError, ConfigError, DiskFullError
from ..evaluate import EvalResult, evaluate_batches
from ..models import create_model, model_entry
from ..preprocess import Preprocess, TrainTransform, eval_views
from ..progress import progress_bar
from ..runtime import cpu_info, emulated_bf16_note, resolve_precision, tune_allocator
from . import distributed
from .optim import Schedule, make_optimizer, set_lr
from .placement import Placement, unwrap
from .rundir import RunDir
from .transfer import NORMALISATIONS, InitSource, describe_fresh, freeze, hold_eval, load_matching, param_groups


class TrainingDiverged(AlexNetError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (or next to start)
    batch: int = 0  # next batch within that epoch
    step: int = 0  # optimizer steps taken in all
    best_error: float = math.inf
    best_epoch: int = -1


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    return None


def build_model(cfg: TrainConfig, store: Store) -> nn.Module:
    """cfg's model sized for the store: its classes, its channels, the training crop."""
    options = dict(cfg.model.options)
    valid = model_entry(cfg.model.arch).options()
    if "in_chans" in valid:
        options.setdefault("in_chans", store.channels)
    if "input_size" in valid:
        options.setdefault("input_size", cfg.data.crop)
    options["num_classes"] = store.num_classes
    return create_model(cfg.model.arch, **options)


@dataclass
class TrainData:
    """The stores, the preprocessing and the batches of one run (one rank's share of them)."""

    path: Path
    train: Store
    val: Store | None
    val_split: str | None
    selects: bool  # validation keeps best.pt and drives the plateau schedule (False: test split, curves only)
    preprocess: Preprocess
    transform: TrainTransform
    loader: Loader

    @classmethod
    def open(cls, path: Path, cfg: TrainConfig, placement: Placement, *, source: InitSource | None = None,
             source_norm: bool = False, preprocess: Preprocess | None = None) -> TrainData:  # fmt: skip
        """`source`: the net a transfer run starts from (the images must fit it; `source_norm`: train
        with its normalisation, not the store's); `preprocess`: the one a resumed run started with."""
        splits = open_dataset(path)
        if "train" not in splits:
            raise ConfigError(f"{path} has no train split (found: {', '.join(splits)})")
        train = splits["train"]
        if source is not None:
            source.check_store(train)
        name, selects = cfg.data.val_split, True
        if name not in splits:
            if cfg.optim.schedule == "plateau":
                raise ConfigError(f"{path} has no {name!r} split, which the plateau schedule watches: prepare the data "
                                  "with --val-fraction, or set data.val_split or optim.schedule")  # fmt: skip
            name, selects = ("test", False) if "test" in splits else (None, False)
        subset = None
        if cfg.data.train_subset:
            if cfg.data.train_subset > len(train):
                raise ConfigError(f"data.train_subset {cfg.data.train_subset} is larger than the training set ({len(train)})")
            subset = balanced_subset(train.labels, cfg.data.train_subset, cfg.data.train_subset_seed)
        dist = placement.dist
        loader = Loader(train, cfg.batch_size // dist.world_size, shuffle=True, seed=cfg.seed, rank=dist.rank,
                        world_size=dist.world_size, drop_last=True, workers=cfg.data.workers, subset=subset)  # fmt: skip
        if preprocess is None:
            use_source = source is not None and source_norm
            preprocess = source.preprocess_for(train) if use_source else Preprocess.for_training(train, cfg.data)  # type: ignore[union-attr]
        transform = TrainTransform.for_training(train, cfg.data, preprocess)
        return cls(path, train, splits.get(name) if name else None, name, selects, preprocess, transform, loader)


class Trainer:
    """One training run. Construction goes in the only order that works, each step needing the last:

    1. resume: read last.pt first, because a resumed run takes its settings from it; or the source
       of a transfer run (`init`), whose network and crop replace cfg's (train/transfer.py);
    2. placement: device and process group (torchrun), which set each rank's share of the batch;
    3. data: stores, preprocessing, transforms, loader (its length sizes the schedule);
    4. model: built for the store's classes and channels; resumed weights (or the source's that
       fit) loaded and frozen layers fixed before it is placed, because the placement copies them
       (to the device, or into the two towers);
    5. optimizer and schedule over the placed parameters, then their resumed state;
    6. wrappers: DDP after the restore (it broadcasts rank 0's weights), then torch.compile.
    """

    def __init__(self, cfg: TrainConfig, data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 resume: bool = False, progress: bool = True, model_parallel: tuple[str, str] | None = None,
                 init: str | os.PathLike[str] | None = None, init_norm: str = "source") -> None:  # fmt: skip
        tune_allocator()  # before the first large allocation (runtime.py)
        self.run = RunDir(out)
        self.progress = progress
        self.cfg, data_path, self.resume_ckpt = self._resume_point(cfg, Path(data), resume)
        source = self._init_source(init, init_norm)  # a transfer run: the source's net and crop
        self.placement = Placement.choose(self.cfg, model_parallel)
        self.device, self.dist, self.memory_format = self.placement.device, self.placement.dist, self.placement.memory_format
        # the run records the precision it trains in (a resumed run keeps the one it started with)
        self.requested_precision = self.cfg.precision
        self.cfg = cfg = replace(self.cfg, precision=resolve_precision(self.cfg.precision, self.device))
        self.autocast = autocast_dtype(cfg, self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)

        # a resumed transfer run trains with the normalisation it started with, as its checkpoint holds it
        saved = preprocess_of(self.resume_ckpt) if self.resume_ckpt is not None and self.init_info else None
        self.data = TrainData.open(data_path, cfg, self.placement, source=source, source_norm=init_norm == "source",
                                   preprocess=saved)  # fmt: skip
        self.loader, self.train_tf = self.data.loader, self.data.transform
        self.view_mode = "ten-crop" if cfg.data.ten_crop_eval else "flip" if cfg.data.flip_eval else "center"
        self.eval_views = eval_views(self.data.preprocess, self.device, self.view_mode)

        self.model = build_model(cfg, self.data.train)  # stays the grouped, single-device model
        if self.resume_ckpt is not None:
            self.model.load_state_dict(self.resume_ckpt["state_dict"])
        elif source is not None:
            same = list(source.class_names or []) == list(self.data.train.class_names)
            loaded, fresh = load_matching(self.model, source.state_dict, same_classes=same)
            self.init_info.update(loaded=len(loaded), fresh=fresh,
                                  fresh_layers=describe_fresh(self.model, source.state_dict, fresh))  # fmt: skip
        self.frozen = freeze(self.model, cfg.freeze) if cfg.freeze else []
        self.net = self.placement.place(self.model)

        groups = param_groups(self.net, self.init_info.get("fresh", []), cfg.optim.head_lr_mult)
        if groups is not None and self.placement.kind == "two-tower":
            raise ConfigError("freeze and optim.head_lr_mult are not supported with --model-parallel")
        self.optimizer = make_optimizer(groups or self.net.parameters(), cfg.optim)
        self.schedule = Schedule(cfg.optim, len(self.loader), cfg.epochs)
        self.state = TrainState()
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.net = self.placement.wrap(self.net, cfg.compile)

    def _init_source(self, init: str | os.PathLike[str] | None, init_norm: str) -> InitSource | None:
        """The source of a transfer run (its settings adapted into self.cfg); a resumed run's record of it."""
        self.init_info: dict[str, Any] = {}
        if self.resume_ckpt is not None:
            if init is not None:
                raise ConfigError("--init starts a run from a trained net; --resume continues one from its own weights")
            self.init_info = dict((self.resume_ckpt.get("train_state") or {}).get("init") or {})
            return None
        if init_norm not in NORMALISATIONS:
            raise ConfigError(f"init_norm must be one of {', '.join(NORMALISATIONS)}, got {init_norm!r}")
        if init is None:
            return None
        source = InitSource.load(init)
        self.cfg = source.adapt(self.cfg)
        self.init_info = {"source": str(init), "arch": source.arch, "normalisation": init_norm}
        return source

    def _resume_point(self, cfg: TrainConfig, data: Path, resume: bool) -> tuple[TrainConfig, Path, dict[str, Any] | None]:
        """(settings, data, checkpoint) to start from: the given ones, or those saved in RUN/last.pt."""
        resume = resume or (distributed.restart_count() > 0 and self.run.last.is_file())
        if not resume:
            if self.run.last.is_file():
                raise AlexNetError(f"{self.run.path} already holds a run; resume it with --resume {self.run.path} or use another --out")
            return cfg, data, None
        if not self.run.last.is_file():
            raise CheckpointError(f"nothing to resume: {self.run.last} does not exist")
        ckpt = load_checkpoint(self.run.last)
        saved = ckpt.get("train_state") or {}
        if "config" not in saved:
            raise CheckpointError(f"{self.run.last} has no training state to resume from")
        return config_from_dict(saved["config"]), Path(saved.get("data", data)), ckpt

    # ------------------------------------------------------------------ state
    def _restore(self, ckpt: dict[str, Any]) -> None:
        ts = ckpt["train_state"]  # the weights were loaded before the model was placed
        self.placement.load_optimizer_state(self.optimizer, self.net, ts["optimizer"])
        self.schedule.load_state_dict(ts["schedule"])
        self.state = TrainState(**ts["progress"])
        torch.set_rng_state(ts["rng_cpu"])
        if torch.cuda.is_available() and ts.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ts["rng_cuda"], self.device)

    def _checkpoint(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        if not self.dist.is_main:
            return
        train_state = {
            "config": self.cfg.to_dict(),
            "data": str(self.data.path),
            "optimizer": self.placement.optimizer_state(self.optimizer, unwrap(self.net)),
            "schedule": self.schedule.state_dict(),
            "progress": vars(self.state).copy(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "world_size": self.dist.world_size,
            "init": self.init_info or None,
        }
        ckpt = make_checkpoint(self.model, state_dict=self.placement.state_dict(unwrap(self.net)),
                               class_names=self.data.train.class_names, preprocess=self.data.preprocess,
                               train_state=train_state, meta=meta or {})  # fmt: skip
        try:
            atomic_save(ckpt, path)
        except DiskFullError as exc:
            raise DiskFullError(exc.errno, f"{exc}; training stopped at step {self.state.step}, and once there is room "
                                f"`alexnet train --resume {Path(path).parent}` continues from the last checkpoint") from None
        except OSError as exc:
            raise AlexNetError(
                f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint is intact"
            ) from None

    # ------------------------------------------------------------------ steps
    def step(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One SGD step on a uint8 batch; returns the loss and the count of correct top-1 guesses,
        both left on the device (no host sync)."""
        st, cfg = self.state, self.cfg
        set_lr(self.optimizer, self.schedule.lr(st.step))
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        # the loader and transform hand over channels_last; the model decides the layout
        x = self.train_tf(images, cfg.seed, st.step).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        st.step += 1
        st.batch += 1
        return loss.detach(), (logits.detach().argmax(1) == labels).sum()

    def validate(self) -> EvalResult | None:
        if self.data.val is None:
            return None
        loader = Loader(self.data.val, 256, shuffle=False, seed=0, rank=self.dist.rank,
                        world_size=self.dist.world_size, drop_last=False, workers=self.cfg.data.workers)  # fmt: skip
        model = unwrap(self.net) if self.placement.kind == "ddp" else self.net
        return evaluate_batches(model, loader.epoch_batches(0), self.eval_views, self.data.train.num_classes,
                                self.device, views=self.view_mode, autocast_dtype=self.autocast,
                                distributed=self.dist.enabled)  # fmt: skip

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        if self.dist.is_main:
            run.lock()
            print(self.headline(), file=sys.stderr, flush=True)  # the run's first line, progress bar or not
            note = emulated_bf16_note(cfg.precision, self.device)
            if note:
                print(f"note: {note}", file=sys.stderr, flush=True)
            if self.init_info and self.resume_ckpt is None:
                print(self.init_line(), file=sys.stderr, flush=True)
            run.enable_tensorboard()
            if self.resume_ckpt is None:
                precision = {"requested": self.requested_precision, "resolved": cfg.precision}
                extra: dict[str, Any] = {"precision": precision}
                if self.init_info:
                    extra["init"] = self.init_info
                run.write_config(cfg.to_dict(), {"data_path": str(self.data.path)}, str(self.device), env_extra=extra)
                run.log({"event": "start", "step": 0})
            else:
                run.truncate_metrics(self.state.step)
                run.log({"event": "resume", "step": self.state.step, "epoch": self.state.epoch})
        try:
            return self._fit()
        finally:
            run.unlock()
            self.placement.close()

    def headline(self) -> str:
        """The run in one line: what trains, where, in which precision (and why), how long."""
        cfg = self.cfg
        where = f"{self.device}" + (f" ({cpu_info().describe()})" if self.device.type == "cpu" else "")
        why = " by precision auto" if self.requested_precision == "auto" else ""
        layout = "channels_last" if self.memory_format == torch.channels_last else "NCHW"
        steps = len(self.loader) * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, len(self.loader) * cfg.epochs)
        verb = "resuming" if self.resume_ckpt is not None else "training"
        return (f"{verb} {cfg.model.arch} on {where}: precision {cfg.precision}{why}, {layout}, batch {cfg.batch_size}, "
                f"{cfg.epochs} epochs ({steps:,} steps)")

    def init_line(self) -> str:
        """What a transfer run took from its source, what starts afresh, what is frozen."""
        info, total = self.init_info, len(self.model.state_dict())
        line = (f"init from {info['source']} ({info['arch']}): {info['loaded']} of {total} tensors loaded; "
                f"from the init: {info['fresh_layers']}; normalisation: {info['normalisation']}'s")
        if self.cfg.freeze:
            line += f"; frozen through {self.cfg.freeze}"
        if self.cfg.optim.head_lr_mult != 1.0 and info["fresh"]:
            line += f"; new layers at {self.cfg.optim.head_lr_mult:g}x the lr"
        return line

    def _fit(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        bar = None
        if self.progress and self.dist.is_main:
            bar = progress_bar(total=len(self.loader) * cfg.epochs, initial=st.step, unit="step", desc="train", smoothing=0.05)
        interval = _Interval(self.device)
        last_val: EvalResult | None = None
        self.good_step = st.step  # the step of the newest checkpoint: the one a divergence falls back to
        stop = False
        while st.epoch < cfg.epochs and not stop:
            self.net.train()
            hold_eval(self.model, self.frozen)
            for images, labels in self.loader.epoch_batches(st.epoch, start=st.batch):
                interval.add(*self.step(images, labels), labels.numel())
                if bar is not None:
                    bar.update(1)
                at_ckpt = st.step % cfg.checkpoint_every == 0
                if st.step % cfg.log_every == 0 or at_ckpt:
                    error = self._end_interval(interval, bar)
                    if at_ckpt:
                        self._save_last()
                    stop = stop or (cfg.stop_train_error > 0 and error <= cfg.stop_train_error)
                if stop or (cfg.max_steps and st.step >= cfg.max_steps):
                    stop = True
                    break
            self._check_finite(interval.mean_loss())
            if stop and st.batch < len(self.loader):  # max_steps or stop_train_error reached mid-epoch
                self._save_last()
                break
            last_val, finished = self._end_epoch()
            stop = stop or finished
        if bar is not None:
            bar.close()
        return {"step": st.step, "epoch": st.epoch, "best_error": st.best_error, "best_epoch": st.best_epoch,
                "last_validation": last_val.to_dict() if last_val else None, "run_dir": str(self.run.path)}  # fmt: skip

    def _end_interval(self, interval: _Interval, bar: Any) -> float:
        """A log line: the interval's one host sync. Returns the interval's running training error."""
        st = self.state
        mean_loss = interval.mean_loss()
        self._check_finite(mean_loss)
        record = {"step": st.step, "epoch": st.epoch + st.batch / len(self.loader), "loss": mean_loss,
                  "train_error": interval.error(), "lr": self.schedule.lr(st.step - 1),
                  "images_per_s": interval.images_per_s() * self.dist.world_size}  # fmt: skip
        if self.dist.is_main:
            self.run.log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{record['images_per_s']:.0f}", refresh=False)
        interval.reset()
        return record["train_error"]

    def _end_epoch(self) -> tuple[EvalResult | None, bool]:
        """Validation, the schedule, best.pt and last.pt; True when the schedule has finished."""
        st, cfg = self.state, self.cfg
        st.epoch += 1
        st.batch = 0
        val, finished = None, False
        if st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs:
            val = self.validate()
            finished = self._after_validation(val)
        self._save_last()
        return val, finished

    def _save_last(self) -> None:
        self._checkpoint(self.run.last)
        self.good_step = self.state.step

    def _after_validation(self, val: EvalResult | None) -> bool:
        st = self.state
        if val is None:
            return False
        dropped = self.schedule.on_validation(val.top1_error) if self.data.selects else False
        record = {"step": st.step, "epoch": st.epoch, "split": self.data.val_split, "val_top1_error": val.top1_error,
                  "val_top5_error": val.top5_error, "val_loss": val.loss, "lr": self.optimizer.param_groups[0]["lr"],
                  "lr_dropped": dropped}  # fmt: skip
        if st.epoch == 1 and val.loss > 0.98 * math.log(self.data.train.num_classes):
            # the paper's bias=1 init can start flat (Caffe's bvlc_alexnet used 0.1 for this reason)
            record["warning"] = "flat start: validation loss still at ln(num_classes) after one epoch"
        if self.dist.is_main:
            self.run.log(record)
        if self.data.selects and val.top1_error < st.best_error:
            st.best_error, st.best_epoch = val.top1_error, st.epoch
            self._checkpoint(self.run.best, meta={"validation": val.to_dict()})
        return self.schedule.finished

    def _check_finite(self, mean_loss: float | None) -> None:
        if mean_loss is None or math.isfinite(mean_loss):
            return
        if self.dist.is_main:
            self.run.log({"event": "diverged", "step": self.state.step, "loss": mean_loss})
        where = f"{self.run.last} (step {self.good_step})" if self.run.last.is_file() else "none was written yet"
        raise TrainingDiverged(
            f"loss became {mean_loss} at step {self.state.step}; stopped. Last good checkpoint: {where}. "
            "Lower optim.lr or check the data."
        )


class _Interval:
    """Loss, hits and images since the last log line, accumulated on the device."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.hits = torch.zeros((), device=device, dtype=torch.int64)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_(), self.hits.zero_()
        self.seen = self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, hits: Tensor, n: int) -> None:
        self.loss += loss
        self.hits += hits
        self.seen += n
        self.steps += 1

    def mean_loss(self) -> float | None:
        return (self.loss / self.steps).item() if self.steps else None

    def error(self) -> float:
        return 1 - self.hits.item() / max(1, self.seen)

    def images_per_s(self) -> float:
        return self.seen / max(time.perf_counter() - self.t0, 1e-9)


def train(cfg: TrainConfig, data: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Train per `cfg` on the prepared dataset at `data` into run folder `out` (see Trainer)."""
    return Trainer(cfg, data, out, **kwargs).fit()
