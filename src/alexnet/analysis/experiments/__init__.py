"""The paper's claims (sections 3.1, 3.3, 3.4, 4.1, 4.2, 6.1, 7) and the transfer of its features
(Yosinski et al. 2014) as seeded experiments on real data.

Every arm of every experiment is a real training run (`alexnet.train.train`, the code behind
`alexnet train`) with seeds 0..n-1; seed s gives every arm the same data order and augmentation,
so arms are compared seed by seed. Each experiment writes RESULTS/<name>/results.json (every
run, mean +- std, paired differences, the environment), table.md (with the command that made
it) and its figures; the runs live in RESULTS/runs/, shared between experiments that train the
same settings (common.py).

The settings below were fixed before any run and are the same for every arm of an experiment
but the one thing it varies; nothing is tuned toward the paper's numbers. The CIFAR-10 ablations
use the `cifar10` preset (docs/reproduction.md says how it was chosen, on the validation split)
shortened to ABLATION_EPOCHS so that an experiment fits about an hour of a 2-core CPU; the
shorter schedule still runs to its end (the one-cycle learning rate reaches zero).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ...errors import ConfigError
from .arms import format_arms, run_arms
from .common import Context, Experiment, Log, epochs_to
from .fig1 import format_sweep, run_sweep
from .fig3 import colourfulness, format_towers, random_halves, run_towers, tower_means
from .fig4 import format_retrieval, precision_at_k, run_retrieval
from .transfer import format_transfer, halves, run_transfer

CIFAR = "cifar10"  # the preset of issue 2/5
ABLATION_EPOCHS = 10

# Fig. 1: "No regularization of any kind": no weight decay, no dropout (cifar-18pct has none), no
# augmentation; the mean image subtracted, as cuda-convnet's CIFAR-10 provider does; the paper's
# update rule at a constant rate (the swept one).
FIG1 = ("optim.name=paper-sgd", "optim.momentum=0.9", "optim.weight_decay=0.0", "optim.schedule=constant",
        "optim.warmup_epochs=0", "optim.label_smoothing=0.0", "batch_size=128", "data.crop=32", "data.pad=0",
        "data.flip=false", "data.lighting=0.0", "data.mean=image", "data.divide_std=false", "data.workers=1",
        "precision=auto", "channels_last=true")  # fmt: skip
FIG1_LRS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)  # a log grid over the rates SGD with momentum 0.9 trains at

# Section 3.3 with cuda-convnet's own data handling: random 24x24 crops of the 32x32 images and
# their mirrors (its --crop-border 4), tested on the ten 24x24 views (its multiview test); its LRN
# constants are conv-local's defaults. One shortened schedule for both arms.
LRN = ("model.arch=conv-local", "model.options.input_size=24", "optim.name=nesterov", "optim.lr=0.02",
       "optim.momentum=0.9", "optim.weight_decay=0.0005", "optim.schedule=onecycle", "optim.warmup_epochs=1",
       "optim.final_lr_fraction=0.0", "batch_size=128", "data.crop=24", "data.pad=0", "data.flip=true",
       "data.lighting=0.0", "data.mean=image", "data.divide_std=false", "data.ten_crop_eval=true",
       "data.workers=1", "precision=fp32")  # fmt: skip

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("relu-vs-tanh", "Fig. 1 (3.1): a four-layer net (cuda-convnet's layers-18pct) reaches 25% training error "
               "on CIFAR-10 six times faster with ReLUs than with tanh units, each at its fastest learning rate",
               "6x fewer epochs to 25%", None, (*FIG1, "model.arch=cifar-18pct"),
               {"relu": (), "tanh": ("model.options.activation=tanh",)}, epochs=60, kind="sweep",
               options={"lrs": FIG1_LRS, "threshold": 0.25, "sweep_epochs": 20}),
    Experiment("relu-vs-tanh-conv-local", "Fig. 1 (3.1) with the conv-local net (section 3.3's) in place of layers-18pct",
               "6x fewer epochs to 25%", None, (*FIG1, "model.arch=conv-local", "precision=fp32"),
               {"relu": (), "tanh": ("model.options.activation=tanh",)}, epochs=24, kind="sweep",
               options={"lrs": (0.005, 0.01, 0.02, 0.04), "threshold": 0.25, "sweep_epochs": 6}),
    Experiment("lrn", "3.3: response normalization takes the conv-local net from 13% to 11% test error on CIFAR-10",
               "-2% test error", None, LRN, {"lrn": (), "no-lrn": ("model.options.lrn=false",)}, epochs=8),
    Experiment("pca-lighting", "4.1: PCA colour (lighting) augmentation lowers top-1 error by over 1%", "-1% top-1",
               CIFAR, (), {"lighting": (), "no-lighting": ("data.lighting=0.0",)}, epochs=ABLATION_EPOCHS,
               needs_rgb=True),
    Experiment("overlap", "3.4: overlapping 3x3/2 pooling instead of 2x2/2 lowers top-1 error by 0.4% and makes the "
               "net slightly harder to overfit", "-0.4% top-1", CIFAR, (),
               {"overlap-3x3/2": (), "plain-2x2/2": ("model.options.pooling=non-overlap",)}, epochs=ABLATION_EPOCHS),
    Experiment("dropout", "4.2: without dropout the net overfits substantially (train/test gap)", "large gap without",
               CIFAR, (), {"dropout": (), "no-dropout": ("model.options.dropout=0.0",)}, epochs=ABLATION_EPOCHS),
    Experiment("depth", "7: removing any middle conv layer costs about 2% top-1", "+2% top-1 each", CIFAR, (),
               {"full": (), **{f"no-{c}": (f"model.options.drop_layer={c}",) for c in ("conv2", "conv3", "conv4", "conv5")}},
               epochs=ABLATION_EPOCHS),
    Experiment("towers", "Fig. 3 (6.1): the kernels of one tower are largely colour-agnostic, the other's largely "
               "colour-specific, in every run", "one tower colour, every run", CIFAR, (),
               {"two-towers": (), "one-tower": ("model.options.groups=[1,1,1,1,1]",)}, epochs=ABLATION_EPOCHS,
               kind="towers", needs_rgb=True),
    Experiment("neighbors", "Fig. 4 (6.1): the training images nearest a test image by fc7 distance show its class, "
               "though they are not near it in pixels", "fc7 neighbours same class", CIFAR, (), {"reference": ()},
               epochs=ABLATION_EPOCHS, kind="retrieval", options={"k": 5, "queries": 1000, "bits": (64, 128, 256)}),
    # Yosinski et al. (2014) at CIFAR-10's scale: the cifar10 preset's net trained on the first half of the classes (A),
    # then the second half (B) with 10, 100, 1,000 and all labelled images a class; every trained arm 30 epochs (the
    # finetune preset's length), the source too. transfer.py says how.
    Experiment("transfer", "6.1 (and Yosinski et al. 2014): features learned on some classes carry to others; with few "
               "labels, a net trained on A and fine-tuned or probed on B beats training on B from scratch",
               "transfer wins with few labels", CIFAR, (),
               {"source": (), "scratch": (), "finetune": (), "finetune-frozen-conv": ("freeze=conv5",)}, epochs=30,
               kind="transfer", presets={"finetune": "finetune", "finetune-frozen-conv": "finetune"},
               options={"per_class": (10, 100, 1000, 0), "probe_layers": ("pool5", "fc6", "fc7")}),
]}  # fmt: skip

RUNNERS = {"arms": run_arms, "sweep": run_sweep, "towers": run_towers, "retrieval": run_retrieval,
           "transfer": run_transfer}  # fmt: skip
FORMATS = {"arms": format_arms, "sweep": format_sweep, "towers": format_towers, "retrieval": format_retrieval,
           "transfer": format_transfer}  # fmt: skip


def list_experiments() -> list[str]:
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


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
    progress: bool = False,
    log: Log | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run experiment `name` with seeds 0..seeds-1 and write its results.json, table.md and figures under
    out/name; `jobs` > 1 trains that many runs at once in worker processes (Context.prefetch)."""
    exp = get(name)
    ctx = Context.open(exp, data, out, seeds=seeds, epochs=epochs, max_steps=max_steps, overrides=overrides,
                       train_eval=train_eval, progress=progress, log=log, jobs=jobs)  # fmt: skip
    return RUNNERS[exp.kind](ctx)


def format_table(results: dict[str, Any]) -> str:
    """The experiment's markdown table (what table.md holds)."""
    return FORMATS[get(results["experiment"]).kind](results)


__all__ = ["EXPERIMENTS", "Experiment", "colourfulness", "epochs_to", "format_table", "halves", "list_experiments",
           "precision_at_k", "random_halves", "run_experiment", "tower_means"]  # fmt: skip
