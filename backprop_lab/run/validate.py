"""Every user-facing value checked before training, from one table of rules.

Hydra already refuses unknown keys (the composed config is in struct mode) and unknown options of
a group (job_check.py checks those first, for a one-line message). This module checks types, ranges and
combinations, and raises `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from backprop_lab.errors import ConfigError

Rule = Callable[[Any], "str | None"]  # None when the value is fine, else what is allowed


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None, nullable: bool = False) -> Rule:
    span = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    span += " or null" if nullable else ""

    def rule(v: Any) -> str | None:
        if v is None and nullable:
            return None
        ok = _is_int(v) and v >= lo and (hi is None or v <= hi)
        return None if ok else f"must be {span}"

    return rule


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    span = f"a number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def rule(v: Any) -> str | None:
        if not _is_number(v) or v != v:
            return f"must be {span}"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"must be {span}"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"must be {span}"
        return None

    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def choice(*names: str) -> Rule:
    def rule(v: Any) -> str | None:
        return None if v in names else f"choose one of: {', '.join(names)}"

    return rule


def int_list(lo: int, nullable: bool = False, nonempty: bool = True) -> Rule:
    def rule(v: Any) -> str | None:
        if v is None and nullable:
            return None
        ok = isinstance(v, list) and (v or not nonempty) and all(_is_int(i) and i >= lo for i in v)
        return None if ok else f"must be a list of integers >= {lo}" + (" or null" if nullable else "")

    return rule


def path(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a path"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def names_list(*names: str) -> Rule:
    def rule(v: Any) -> str | None:
        ok = isinstance(v, list) and all(isinstance(n, str) and n in names for n in v) and len(set(v)) == len(v)
        return None if ok else f"must be a list of distinct names from: {', '.join(names)} (e.g. [{','.join(names)}])"

    return rule


def standardize_mode(v: Any) -> str | None:  # (true / false: what npz's boolean meant before)
    return (
        None
        if isinstance(v, bool) or v in ("auto", "channel", "feature", "global", "none")
        else "choose one of: auto, channel, feature, global, none"
    )


def image_size(v: Any) -> str | None:
    ok = v is None or (isinstance(v, list) and len(v) == 2 and all(_is_int(i) and i >= 1 for i in v))
    return None if ok else "must be [H, W] (two integers >= 1) or null"


positive = number(0, lo_open=True)
nonnegative = number(0)
probability = number(0, 1, hi_open=True)


def epsilon(v: Any) -> str | None:
    """A positive number, or Adafactor's pair [eps1 or null, eps2]."""
    if isinstance(v, list):
        ok = len(v) == 2 and (v[0] is None or positive(v[0]) is None) and positive(v[1]) is None
        return None if ok else "must be a number > 0, or a pair [eps1 or null, eps2] of numbers > 0"
    return positive(v)


def device_name(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)
    return None if ok else "choose one of: auto, cpu, cuda, cuda:N, mps"


def betas(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(probability(b) is None for b in v)
    return None if ok else "must be two numbers in [0, 1), like [0.9, 0.999]"


# Keys present in every run.
RULES: dict[str, Rule] = {
    "seed": integer(0),
    "model.init": lambda v: None if v is None else choice("he", "xavier", "lecun", "orthogonal", "torch")(v),
    "act.init": choice("he", "xavier", "lecun", "orthogonal", "torch"),
    "regularizer.l1": nonnegative,
    "regularizer.l2": nonnegative,
    "regularizer.l2_mode": choice("penalty", "decoupled"),
    "regularizer.dropout": probability,
    "regularizer.batchnorm": boolean,
    "regularizer.decay_bias_and_norm": boolean,
    "trainer.max_steps": integer(1, nullable=True),
    "trainer.max_epochs": integer(1, nullable=True),
    "trainer.batch_size": integer(1),
    "trainer.eval_every": integer(1),
    "trainer.log_every": integer(1),
    "trainer.monitor": choice("val/acc", "val/loss"),
    "trainer.early_stopping": integer(0),
    "trainer.min_delta": nonnegative,
    "trainer.grad_clip": nonnegative,
    "trainer.device": device_name,
    "trainer.precision": choice("fp32", "bf16"),
    "trainer.deterministic": boolean,
    "trainer.compile": boolean,
    "trainer.checkpoint_every": integer(0),
    "trainer.threads": integer(1, nullable=True),
    "trainer.progress": choice("auto", "bar", "plain", "off"),
    "trainer.save_weights": boolean,
    "trainer.diagnostics": boolean,
    "trainer.target_acc": lambda v: None if v is None else number(0, 1)(v),
    "data.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.n_train": integer(1, nullable=True),
    "data.source_classes": int_list(0, nullable=True),
    "data.target_classes": int_list(0, nullable=True),
    "data.split_seed": integer(0),
    "logger.tensorboard": boolean,
    "logger.mlflow": boolean,
    "logger.tracking_uri": lambda v: (
        None
        if isinstance(v, str) and v
        else "must be an MLflow tracking URI, e.g. sqlite:///mlflow.db or http://HOST:5000"
    ),
    "logger.experiment": lambda v: None if v is None or (isinstance(v, str) and v) else "must be a name (or null)",
}

# Keys that only some options of a group have, checked wherever they appear.
GROUP_KNOBS: dict[str, dict[str, Rule]] = {
    "regularizer": {"weight": nonnegative},
    "optimizer": {
        "lr": positive,
        "weight_decay": nonnegative,
        "momentum": probability,
        "dampening": number(0, 1),
        "betas": betas,
        "eps": epsilon,
        "amsgrad": boolean,
        "nesterov": boolean,
        "ns_steps": integer(1),
        "adjust_lr_fn": choice("original", "match_rms_adamw"),
        "beta2_decay": number(hi=0),
        "d": positive,
        "elementwise": boolean,
        "alpha": probability,
        "centered": boolean,
        "lr_decay": nonnegative,
        "initial_accumulator_value": nonnegative,
        "rho": number(0, 1),
        "momentum_decay": nonnegative,
    },
    "scheduler": {
        "step_size": integer(1),
        "gamma": number(0, 1, lo_open=True),
        "min_lr": nonnegative,
        "warmup_steps": integer(0),
        "pct_start": number(0, 1, lo_open=True, hi_open=True),
        "div_factor": positive,
        "final_div_factor": positive,
        "factor": number(0, 1, lo_open=True, hi_open=True),
        "patience": integer(0),
        "milestones": int_list(1),
    },
    "act": {
        "negative_slope": nonnegative,
        "init_slope": nonnegative,
        "alpha": positive,
        "beta": positive,
        "approximate": choice("none", "tanh"),
    },
    "model": {
        "depth": integer(1),
        "width": integer(1),
        "residual": boolean,
        "channels": int_list(1),
        "kernel_sizes": int_list(1),
        "strides": int_list(1),
        "padding": integer(0),
        "blocks_per_stage": integer(1),
    },
    "pretrain": {
        "steps": integer(1, nullable=True),
        "finetune": choice("full", "freeze", "gradual"),
        "unfreeze_every": integer(1),
        "noise": nonnegative,
        "reuse": boolean,
        "path": path,
        "data_path": optional(path),
    },
    "data": {
        "num_samples": integer(10),
        "generation_seed": integer(0),
        "test_fraction": number(0, 1, lo_open=True, hi_open=True),
        "num_classes": integer(2),
        "shape": int_list(1),
        "standardize": standardize_mode,
        "path": path,
        "root": optional(path),
        "download": boolean,
        "layout": choice("auto", "nchw", "nhwc"),
        "augment": names_list("crop", "flip"),
        "crop_padding": integer(0),
        "size": image_size,
    },
}


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _check(key: str, value: Any, rule: Rule) -> None:
    if value == "???":
        raise ConfigError(key, value, f"is required: set it on the command line, e.g. {key}=...")
    problem = rule(value)
    if problem:
        raise ConfigError(key, value, problem)


def validate(cfg: dict, registered: Callable[[], dict[str, tuple[str, ...]]]) -> None:
    """Check a composed config (as a plain dict). `registered()` maps group -> registered option names;
    it imports torch (the registries hold torch classes), so it is called only once the values passed:
    a refused value is one line without torch's start-up."""
    for key, rule in RULES.items():
        _check(key, _get(cfg, key), rule)
    for group, knobs in GROUP_KNOBS.items():
        for key, value in cfg[group].items():
            if key in knobs:
                _check(f"{group}.{key}", value, knobs[key])
    names = registered()
    for group, valid in names.items():
        if cfg[group].get("_target_") is None:  # (an option of the user's own names its _target_ instead)
            _check(f"{group}.name", cfg[group].get("name"), choice(*valid))

    trainer, data, pretrain = cfg["trainer"], cfg["data"], cfg["pretrain"]
    if trainer["max_steps"] is None and trainer["max_epochs"] is None:
        raise ConfigError("trainer.max_steps", None, "set trainer.max_steps or trainer.max_epochs")
    model = cfg["model"]
    if "channels" in model and not len(model["channels"]) == len(model["kernel_sizes"]) == len(model["strides"]):
        raise ConfigError(
            "model.kernel_sizes",
            model["kernel_sizes"],
            f"model.channels, model.kernel_sizes and model.strides need the same length ({len(model['channels'])})",
        )
    source, target = data["source_classes"], data["target_classes"]
    for key, classes in (("data.source_classes", source), ("data.target_classes", target)):
        if classes is not None and len(set(classes)) < len(classes):
            raise ConfigError(key, classes, "lists a class twice")
        if classes is not None and key == "data.target_classes" and len(classes) < 2:
            raise ConfigError(key, classes, "needs at least 2 classes")
    other_data = pretrain.get("data")  # pretraining on another data set: its classes are its own
    if other_data is not None and other_data not in names["data"]:
        raise ConfigError("pretrain.data", other_data, f"choose a data option: {', '.join(names['data'])}")
    if source is not None and target is not None and set(source) & set(target) and other_data is None:
        raise ConfigError("data.source_classes", source, f"must not share classes with data.target_classes={target}")
    if pretrain["name"] == "supervised" and source is None and other_data is None:
        raise ConfigError(
            "data.source_classes",
            None,
            "pretrain=supervised needs the pretraining task: its classes, e.g. data.source_classes=[0,1,2,3,4] "
            "data.target_classes=[5,6,7,8,9], or another data set, e.g. pretrain.data=fashion_mnist",
        )
    if pretrain["name"] == "checkpoint":
        _check("pretrain.path", pretrain["path"], GROUP_KNOBS["pretrain"]["path"])
    if data["name"] in ("npz", "images"):
        _check("data.path", data["path"], GROUP_KNOBS["data"]["path"])
