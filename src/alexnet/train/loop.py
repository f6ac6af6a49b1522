"""The training loop: the paper's recipe end to end, resumable to the exact step.

Exact resume: the data order depends only on (seed, epoch), the augmentation of step s only
on (seed, s), and the checkpoint holds model, optimizer velocity, schedule, epoch, batch,
step and the global RNG (dropout). A run killed at any moment and resumed from `last.pt`
therefore repeats exactly the steps since that checkpoint and ends with the same weights.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_save, load_checkpoint, make_checkpoint
from ..config import TrainConfig, config_from_dict
from ..data import Store, open_dataset
from ..data.loader import Loader, balanced_subset
from ..errors import AlexNetError, CheckpointError, ConfigError
from ..evaluate import EvalResult, evaluate_batches
from ..models import create_model, model_entry
from ..runtime import resolve_device
from ..transforms import eval_views, preprocess_for, train_transform
from . import distributed
from .optim import Schedule, make_optimizer, set_lr
from .rundir import RunDir


class TrainingDiverged(AlexNetError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (or next to start)
    batch: int = 0  # next batch within that epoch
    step: int = 0  # optimizer steps taken in all
    best_error: float = math.inf
    best_epoch: int = -1


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    return None


def _val_store(splits: dict[str, Store], cfg: TrainConfig) -> Store | None:
    for name in (cfg.data.val_split, "val", "test"):
        if name in splits:
            return splits[name]
    return None


def build_model(cfg: TrainConfig, store: Store) -> nn.Module:
    options = dict(cfg.model.options)
    valid = model_entry(cfg.model.arch).options()
    if "in_chans" in valid:
        options.setdefault("in_chans", store.channels)
    if "input_size" in valid:
        options.setdefault("input_size", cfg.data.crop)
    options["num_classes"] = store.num_classes
    return create_model(cfg.model.arch, **options)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        data: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        resume: bool = False,
        progress: bool = True,
        model_parallel: tuple[str, str] | None = None,
    ) -> None:
        self.run = RunDir(out)
        self.data_path = Path(data)
        self.progress = progress
        resume = resume or (distributed.restart_count() > 0 and self.run.last.is_file())
        self.resume_ckpt: dict[str, Any] | None = None
        if resume:
            if not self.run.last.is_file():
                raise CheckpointError(f"nothing to resume: {self.run.last} does not exist")
            self.resume_ckpt = load_checkpoint(self.run.last)
            saved = self.resume_ckpt.get("train_state") or {}
            if "config" not in saved:
                raise CheckpointError(f"{self.run.last} has no training state to resume from")
            cfg = config_from_dict(saved["config"])
            self.data_path = Path(saved.get("data", data))
        elif self.run.last.is_file():
            raise AlexNetError(f"{self.run.path} already holds a run; resume it with --resume {self.run.path} or use another --out")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = distributed.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world_size} processes")
        self.autocast = _autocast_dtype(cfg, self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)

        splits = open_dataset(self.data_path)
        if "train" not in splits:
            raise ConfigError(f"{self.data_path} has no train split (found: {', '.join(splits)})")
        self.train_store = splits["train"]
        self.val_store = _val_store(splits, cfg)

        self.model = build_model(cfg, self.train_store)
        if self.resume_ckpt is not None:
            self.model.load_state_dict(self.resume_ckpt["state_dict"])
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.split = None
        if model_parallel is not None:
            from ..parallel.model_parallel import split_towers

            if self.dist.enabled:
                raise ConfigError("--model-parallel with torchrun is not supported: one process drives both towers")
            # the towers hold the live weights; self.model stays on the CPU in the grouped layout for checkpoints
            self.split = split_towers(self.model, model_parallel)
            self.device = torch.device(model_parallel[0])
            self.memory_format = torch.contiguous_format
            self.net: nn.Module = self.split
        else:
            self.model = self.model.to(self.device, memory_format=self.memory_format)
            self.net = self.model
        self.preprocess, self.mean_image = preprocess_for(cfg.data, self.train_store)
        self.train_tf = train_transform(cfg.data, self.train_store)
        self.view_mode = "ten-crop" if cfg.data.ten_crop_eval else "flip" if cfg.data.flip_eval else "center"
        self.eval_views = eval_views(self.preprocess, self.mean_image, self.device, self.view_mode)
        self.subset = None
        if cfg.data.train_subset:
            if cfg.data.train_subset > len(self.train_store):
                raise ConfigError(f"data.train_subset {cfg.data.train_subset} is larger than the training set "
                                  f"({len(self.train_store)})")  # fmt: skip
            self.subset = balanced_subset(self.train_store.labels, cfg.data.train_subset)
        self.loader = Loader(self.train_store, cfg.batch_size // self.dist.world_size, shuffle=True, seed=cfg.seed,
                             rank=self.dist.rank, world_size=self.dist.world_size, drop_last=True,
                             workers=cfg.data.workers, subset=self.subset)  # fmt: skip
        if len(self.loader) == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(self.train_store)})")
        self.optimizer = make_optimizer(self.net.parameters(), cfg.optim)
        self.schedule = Schedule(cfg.optim, len(self.loader), cfg.epochs)
        self.state = TrainState()
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    # ------------------------------------------------------------------ state
    def _restore(self, ckpt: dict[str, Any]) -> None:
        ts = ckpt["train_state"]  # the weights were loaded before the model was placed
        if self.split is not None:
            self.split.load_grouped_optimizer_state(self.optimizer, ts["optimizer"])
        else:
            self.optimizer.load_state_dict(ts["optimizer"])
        self.schedule.load_state_dict(ts["schedule"])
        self.state = TrainState(**ts["progress"])
        torch.set_rng_state(ts["rng_cpu"])
        if torch.cuda.is_available() and ts.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ts["rng_cuda"], self.device)

    def _checkpoint(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        if not self.dist.is_main:
            return
        optimizer_state = self.optimizer.state_dict()
        if self.split is not None:  # checkpoints stay in the grouped single-device layout
            self.model.load_state_dict(self.split.grouped_state_dict())
            optimizer_state = self.split.grouped_optimizer_state(self.optimizer)
        train_state = {
            "config": self.cfg.to_dict(),
            "data": str(self.data_path),
            "optimizer": optimizer_state,
            "schedule": self.schedule.state_dict(),
            "progress": vars(self.state).copy(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "world_size": self.dist.world_size,
        }
        ckpt = make_checkpoint(self.model, class_names=self.train_store.class_names, preprocess=self.preprocess,
                               mean_image=self.mean_image, train_state=train_state, meta=meta or {})  # fmt: skip
        try:
            atomic_save(ckpt, path)
        except OSError as exc:
            raise AlexNetError(
                f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint is intact"
            ) from None

    # ------------------------------------------------------------------ loop
    def validate(self) -> EvalResult | None:
        if self.val_store is None:
            return None
        loader = Loader(self.val_store, 256, shuffle=False, seed=0, rank=self.dist.rank,
                        world_size=self.dist.world_size, drop_last=False, workers=self.cfg.data.workers)  # fmt: skip
        model = self.net if not isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net.module
        return evaluate_batches(model, loader.epoch_batches(0), self.eval_views, self.train_store.num_classes,
                                self.device, views=self.view_mode, autocast_dtype=self.autocast,
                                distributed=self.dist.enabled)  # fmt: skip

    def fit(self) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        if self.dist.is_main:
            run.lock()
            run.enable_tensorboard()
            if self.resume_ckpt is None:
                run.write_config(cfg.to_dict(), {"data_path": str(self.data_path)}, str(self.device))
            else:
                run.truncate_metrics(self.state.step)
                run.log({"event": "resume", "step": self.state.step, "epoch": self.state.epoch})
        try:
            return self._fit()
        finally:
            run.unlock()
            distributed.cleanup(self.dist)

    def _fit(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        steps_per_epoch = len(self.loader)
        gen = torch.Generator(device=self.device)
        last_val: EvalResult | None = None
        stop = False
        bar = None
        if self.progress and self.dist.is_main:
            from ..progress import progress_bar

            bar = progress_bar(total=steps_per_epoch * cfg.epochs, initial=st.step, unit="step", desc="train",
                               smoothing=0.05)
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = steps_in = 0
        t_interval = time.perf_counter()
        good_step = st.step
        while st.epoch < cfg.epochs and not stop:
            self.net.train()
            for images, labels in self.loader.epoch_batches(st.epoch, start=st.batch):
                set_lr(self.optimizer, self.schedule.lr(st.step))
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                gen.manual_seed(cfg.seed * 1_000_003 + st.step)  # augmentation of step s depends on (seed, s) only
                # the loader and transform hand over channels_last; the model decides the layout
                x = self.train_tf(images, gen).contiguous(memory_format=self.memory_format)
                with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                    logits = self.net(x)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_sum += loss.detach()
                hits += (logits.detach().argmax(1) == labels).sum()
                seen += labels.numel()
                steps_in += 1
                st.step += 1
                st.batch += 1
                if bar is not None:
                    bar.update(1)
                at_log = st.step % cfg.log_every == 0
                at_ckpt = st.step % cfg.checkpoint_every == 0
                if at_log or at_ckpt:
                    mean_loss = (loss_sum / steps_in).item()  # the interval's one host sync
                    if not math.isfinite(mean_loss):
                        self._diverged(mean_loss, good_step)
                    elapsed = time.perf_counter() - t_interval
                    record = {"step": st.step, "epoch": st.epoch + st.batch / steps_per_epoch, "loss": mean_loss,
                              "train_error": 1 - hits.item() / max(1, seen), "lr": self.schedule.lr(st.step - 1),
                              "images_per_s": seen * self.dist.world_size / max(elapsed, 1e-9)}  # fmt: skip
                    if self.dist.is_main:
                        self.run.log(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{record['images_per_s']:.0f}", refresh=False)
                    loss_sum.zero_(), hits.zero_()
                    seen, steps_in, t_interval = 0, 0, time.perf_counter()
                    if at_ckpt:
                        self._checkpoint(self.run.last)
                        good_step = st.step
                if cfg.max_steps and st.step >= cfg.max_steps:
                    stop = True
                    break
            if steps_in and not math.isfinite((loss_sum / steps_in).item()):
                self._diverged((loss_sum / steps_in).item(), good_step)
            if stop and st.batch < steps_per_epoch:  # max_steps reached mid-epoch
                self._checkpoint(self.run.last)
                break
            # ---- epoch end: validation, schedule, best, checkpoint
            st.epoch += 1
            st.batch = 0
            if st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs:
                last_val = self.validate()
                stop = self._after_validation(last_val) or stop
            self._checkpoint(self.run.last)
            good_step = st.step
        if bar is not None:
            bar.close()
        return {"step": st.step, "epoch": st.epoch, "best_error": st.best_error, "best_epoch": st.best_epoch,
                "last_validation": last_val.to_dict() if last_val else None, "run_dir": str(self.run.path)}  # fmt: skip

    def _after_validation(self, val: EvalResult | None) -> bool:
        st = self.state
        if val is None:
            return False
        dropped = self.schedule.on_validation(val.top1_error)
        record = {"step": st.step, "epoch": st.epoch, "val_top1_error": val.top1_error,
                  "val_top5_error": val.top5_error, "val_loss": val.loss, "lr": self.optimizer.param_groups[0]["lr"],
                  "lr_dropped": dropped}  # fmt: skip
        flat = st.epoch == 1 and val.loss > 0.98 * math.log(self.train_store.num_classes)
        if flat:  # the paper's bias=1 init can start flat (Caffe's bvlc_alexnet used 0.1 for this reason)
            record["warning"] = "flat start: validation loss still at ln(num_classes) after one epoch"
        if self.dist.is_main:
            self.run.log(record)
        if val.top1_error < st.best_error:
            st.best_error, st.best_epoch = val.top1_error, st.epoch
            self._checkpoint(self.run.best, meta={"validation": val.to_dict()})
        return self.schedule.finished

    def _diverged(self, value: float, good_step: int) -> None:
        if self.dist.is_main:
            self.run.log({"event": "diverged", "step": self.state.step, "loss": value})
        where = f"{self.run.last} (step {good_step})" if self.run.last.is_file() else "none was written yet"
        raise TrainingDiverged(
            f"loss became {value} at step {self.state.step}; stopped. Last good checkpoint: {where}. "
            "Lower optim.lr or check the data."
        )


def train(cfg: TrainConfig, data: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Train per `cfg` on the prepared dataset at `data` into run folder `out` (see Trainer)."""
    return Trainer(cfg, data, out, **kwargs).fit()
