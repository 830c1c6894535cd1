"""The hyperparameters of one run: a typed, validated model, loaded from YAML plus `key=value` overrides.

Every default is declared once, here; the command line reads them from this model. Every error is
a `ConfigError` whose message is one line naming the field and the value that was given.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

__all__ = ["Config", "ConfigError", "fitted_hparams", "OPTIMIZERS", "SCHEDULES", "DEFAULT_RUNS_DIR", "load_config", "make_config", "parse_override",
           "apply_overrides", "yaml_load", "MAX_YAML_BYTES", "MAX_YAML_NODES"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
DEFAULT_RUNS_DIR = "trainlab-runs"  # where runs keep their checkpoints (run-<id>/), unless told otherwise
SCHEDULES = ("constant", "step", "multistep", "cosine", "linear", "inverse_sqrt", "cyclic_cosine")


# Upper bounds of the numeric hyperparameters. Each is far beyond any real run, and low enough that no
# product the loop forms from them (lr x batch scaling, epochs x updates per epoch, seed x 1_000_003)
# overflows float32 or int64: a value past a bound is one line naming the field, never a crash hours later.
MAX_LR = 1e6              # lr, weight_decay, eps: a float32 update of lr x 1e12 (largest batch scaling) stays finite
MAX_EPOCHS = 1_000_000    # epochs and every *_epochs, cycles, patience
MAX_STEPS = 10**12        # steps, warmup_steps, monitor_every
MAX_BATCH = 2**24         # batch_size (per device)
MAX_ACCUM = 2**16         # accum_steps
MAX_WIDTH = 2**20         # width; the pre-flight check refuses a model too big for memory before building it
MAX_SEED = 2**32 - 1      # seed, split_seed: numpy and torch generators take 32/64-bit seeds

# YAML is read with bounds: a config or space file is small, and aliases must not expand into a bomb
# ("billion laughs": 9 lines whose aliases expand to 10^9 strings). The composed document is measured with
# every alias expanded (each node counted once per reference, in linear time) before anything is built.
MAX_YAML_BYTES = 1_000_000  # text of one config, space or --set value
MAX_YAML_NODES = 100_000    # scalars, sequences and mappings, aliases expanded


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; people write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$""", re.X),
    list("-+0123456789."),
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded_size(root: yaml.Node, field: str) -> None:
    """ConfigError when `root`, with every alias expanded, has more than MAX_YAML_NODES nodes or refers to
    itself. Iterative (no recursion limit) and linear: each distinct node's expanded size is computed once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the current path from the root: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > MAX_YAML_NODES:
                raise ConfigError(f"{field}: the YAML expands to more than {MAX_YAML_NODES} values (aliases such as "
                                  f"*name repeat what they refer to); write it out plainly")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError(f"{field}: the YAML refers to itself through an alias (*name inside its own &name)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def yaml_load(text: str, field: str = "config") -> Any:
    """Parse YAML safely, reading scientific notation such as 1e-3 as a number.

    Bounded: text over MAX_YAML_BYTES, a document that expands (through aliases) to more than MAX_YAML_NODES
    values, one that refers to itself, nesting too deep to read or a number too long to convert raise a
    one-line ConfigError naming `field`; a syntax error raises yaml.YAMLError (callers say where).

    >>> yaml_load("lr: 1e-3")
    {'lr': 0.001}
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{field}: {len(text)} characters of YAML, more than the {MAX_YAML_BYTES} a config may hold")
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{field}: the YAML is nested too deeply to read") from None
        if node is None:
            return None
        _check_expanded_size(node, field)
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise ConfigError(f"{field}: the YAML is nested too deeply to read") from None
        except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"{field}: a value in the YAML cannot be read ({detail})") from None
    finally:
        loader.dispose()


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the field and the value."""


class Config(BaseModel):
    """One run's hyperparameters. Units are in the names: `*_steps` count optimizer updates."""

    # allow_inf_nan=False: every float field must be finite (inf and nan are one line, not a crash later)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # what is trained
    task: str = "mnist1d"
    model: str = "resnet"
    width: int | None = Field(None, ge=1, le=MAX_WIDTH, description="hidden units (mlp) or channels (cnn, resnet); None: the model's own default")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # optimizer
    optimizer: Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"] = "adam"
    lr: float = Field(3e-3, gt=0.0, le=MAX_LR, description="base learning rate (the peak, after warmup)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0, le=MAX_LR)
    weight_decay: float = Field(0.0, ge=0.0, le=MAX_LR)
    # how long
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="examples per forward/backward on one device (the per-device batch); global batch = batch_size x processes x accum_steps")
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="stop after this many optimizer updates (overrides epochs)")
    minutes: float | None = Field(None, gt=0.0, le=1e7, description="fit the run to this wall time (from its start): after the first epoch the schedule is shortened to the updates that fit at the measured speed, so its decay ends in time (never lengthened past epochs/steps), and the run stops there at the latest; None: off")
    # data parallel and large batches (torchrun / trainlab train --nproc K; Goyal et al. 2017)
    accum_steps: int = Field(1, ge=1, le=MAX_ACCUM, description="micro-batches per optimizer update (gradient accumulation); schedules count updates")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field("none", description="scale lr by the global batch over base_batch_size (linear: x k, sqrt: x sqrt(k))")
    base_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH * MAX_ACCUM, description="global batch size at which lr was tuned; None: batch_size (one device, no accumulation)")
    scaling_warmup_epochs: float = Field(5.0, ge=0.0, le=MAX_EPOCHS, description="warmup added when lr_scaling is on and no warmup_steps/warmup_epochs is set; 0: none")
    sync_bn: bool = Field(False, description="SyncBatchNorm across processes (CUDA); default: per-device BatchNorm statistics")
    # learning-rate schedule, counted in optimizer updates
    schedule: Literal["constant", "step", "multistep", "cosine", "linear", "inverse_sqrt", "cyclic_cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    min_lr_factor: float = Field(0.0, ge=0.0, lt=1.0, description="floor of cosine/linear schedules, as a fraction of lr")
    step_size_epochs: float = Field(30.0, gt=0.0, le=MAX_EPOCHS)
    milestones_epochs: list[float] = Field(default_factory=lambda: [30.0, 60.0, 90.0])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    cycles: int = Field(5, ge=1, le=MAX_EPOCHS, description="cyclic_cosine: number of equal cycles (when restart_period_epochs is unset)")
    restart_period_epochs: float | None = Field(None, gt=0.0, le=MAX_EPOCHS)
    restart_mult: float = Field(1.0, ge=1.0, le=100.0)
    # regularization and stability
    augment: Literal["none", "flip_crop"] = Field("none", description="built-in image tasks (shapes32): flip_crop flips and shifts training batches on the device (random horizontal flip, crop of the 4-pixel zero-padded image); none: off")
    grad_clip: float | None = Field(None, gt=0.0, le=1e12, description="max global gradient norm")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # early stopping, counted in validation checks (one per epoch)
    patience: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="stop after this many validations without improvement; None: off")
    early_stop_metric: str = "val/acc"
    early_stop_mode: Literal["auto", "max", "min"] = "auto"
    min_delta: float = Field(0.0, ge=0.0, le=1e12)
    # transfer learning (trainlab transfer; ignored by plain training)
    backbone_lr_mult: float = Field(0.1, gt=0.0, le=1.0, description="learning rate of pretrained stages as a fraction of lr (finetune:K; full: of the first stage, rising geometrically to 1 at the head)")
    unfreeze_every_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="finetune:K: unfreeze one more stage, top down, every this many epochs (gradual unfreezing); None: all K at once")
    # data and machine
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="initialization, data order and dropout")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="which examples form the validation split (kept apart from seed so runs with different seeds share one split)")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="autocast dtype of forward and loss: fp32 (none), bf16, fp16 (with a GradScaler); auto: bf16 on a CUDA device that supports it, else fp32")
    compile: bool = Field(False, description="torch.compile the model for training (checkpoints keep the plain parameter names)")
    channels_last: bool = Field(False, description="channels-last memory format for the model and 4-D (image) batches")
    parallel: Literal["ddp", "pipeline"] = Field("ddp", description="under --nproc K: ddp (each process a replica on its shard of the data) or pipeline (the model's stages split across processes, fed micro-batches)")
    pipeline_microbatches: int = Field(4, ge=1, le=MAX_BATCH, description="parallel=pipeline: micro-batches per batch (GPipe); batch_size must split into them")
    num_workers: int = Field(0, ge=0, le=1024, description="DataLoader worker processes for datasets that are not in-memory tensors; 0: read in the training process")
    pin_memory: bool = Field(False, description="page-locked host batches for faster copies to a CUDA device (ignored on CPU)")
    persistent_workers: bool = Field(False, description="keep the DataLoader workers alive between epochs (needs num_workers > 0)")
    monitor_every: int = Field(50, ge=0, le=MAX_STEPS, description="steps between update/weight-ratio measurements; 0: off")
    checkpoint_every_minutes: float | None = Field(None, gt=0.0, le=1e9)
    # weight averaging and ensembles (trainlab ensemble)
    ema: float | None = Field(None, gt=0.0, lt=1.0, validate_default=True, description="decay per optimizer update of an exponential moving average of the weights, e.g. 0.999; validated every epoch as val/acc_ema; None: off")
    ema_warmup: bool = Field(False, description="ramp the EMA decay up as min(ema, (1 + t) / (10 + t)) after t updates (for short runs)")
    snapshots: bool = Field(False, description="schedule cyclic_cosine: save the weights at the end of each cycle (snapshot ensemble)")
    seeds: int = Field(1, ge=1, le=1000, description="trainlab train: how many independent members to train, with seeds seed, seed+1, ...")

    @field_validator("lr", "weight_decay", "eps", "momentum", "dropout")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("task", "model", "early_stop_metric", "device")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # a name is printed in progress lines and search logs: no terminal escape sequences in it
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
            raise ValueError("must not hold control characters")
        return value

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("each beta must be in [0, 1)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("milestones_epochs")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if any(m < 0 for m in value) or list(value) != sorted(value):
            raise ValueError("must be non-negative and increasing")
        if any(m > MAX_EPOCHS for m in value):
            raise ValueError(f"each milestone must be at most {MAX_EPOCHS} epochs")
        if len(value) > 1000:
            raise ValueError(f"at most 1000 milestones, got {len(value)}")
        return value

    @field_validator("ema")
    @classmethod
    def _ema_metric(cls, value: float | None, info: ValidationInfo) -> float | None:
        metric = info.data.get("early_stop_metric", "")
        if value is None and metric.endswith("_ema"):
            raise ValueError(f"early_stop_metric {metric!r} is measured only with an EMA of the weights; "
                             "set ema (e.g. ema=0.999)")
        return value

    @field_validator("snapshots")
    @classmethod
    def _snapshots(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("schedule") != "cyclic_cosine":
            raise ValueError(f"needs schedule cyclic_cosine (a snapshot at the end of each cycle), "
                             f"but schedule is {info.data.get('schedule')!r}")
        return value

    @model_validator(mode="after")
    def _one_warmup(self) -> "Config":
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("set warmup_steps or warmup_epochs, not both")
        if self.minutes is not None and self.schedule == "cyclic_cosine":
            raise ValueError("minutes fits the length of one decay to the time, but schedule cyclic_cosine "
                             "restarts: set its cycles or restart_period_epochs for the time instead")
        return self

    @field_validator("persistent_workers")
    @classmethod
    def _persistent_workers(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("num_workers"):
            raise ValueError("needs num_workers > 0 (workers to keep alive), but num_workers is "
                             f"{info.data.get('num_workers')!r}")
        return value

    @property
    def mode(self) -> str:
        """Direction of the early-stopping metric: 'min' for losses and errors (loss, mse, mae, err), 'max' otherwise."""
        if self.early_stop_mode != "auto":
            return self.early_stop_mode
        name = self.early_stop_metric.rsplit("/", 1)[-1].lower()
        return "min" if any(w in name for w in ("loss", "mse", "mae", "err")) else "max"

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


def _field(name: str) -> str:
    """A key as messages show it: as is when it is a plain name (lr, betas.0), else quoted and escaped."""
    return name if re.fullmatch(r"[A-Za-z_][\w.]{0,63}", name) else short_repr(name)


def _format_error(err: ValidationError, given: dict[str, Any]) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "config"
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(field, Config.model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{_field(field)}: unknown key{hint}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if not first["loc"]:  # a rule across fields: its message names them; the whole config is no help
        return f"config: {msg}"
    value = first.get("input", given.get(field))
    return f"{field}: {msg[0].lower() + msg[1:]}, got {short_repr(value)}"


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut in the middle when longer than `limit` (so a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


def parse_override(item: str) -> tuple[str, Any]:
    """'lr=0.05' -> ('lr', 0.05); the value is parsed as YAML, so lists and numbers work."""
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml_load(raw, _field(key) if key else "--set") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return key, value


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with `overrides` applied and validated as a whole."""
    return make_config({**config.model_dump(), **overrides})


def make_config(data: dict[str, Any]) -> Config:
    """A validated Config from a mapping; ConfigError (one line naming the field and the value) otherwise."""
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config: keys must be hyperparameter names, got {short_repr(key)}")
    try:
        return Config(**data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, data)) from None


def read_yaml_mapping(path: str | Path, field: str, what: str) -> dict[str, Any]:
    """The mapping in a YAML file (empty for an empty file); else one ConfigError line naming `field`: no
    such file, not valid YAML (with the line), or not a mapping of `what`."""
    p = Path(path)
    try:
        is_file = p.is_file()
    except OSError as err:   # a name too long for the file system, say: is_file() only hides "not there"
        raise ConfigError(f"{field}: cannot read {short_repr(str(path))}: {err.strerror or err}") from None
    if not is_file:
        raise ConfigError(f"{field}: no such file {short_repr(str(path))}")
    try:
        if p.stat().st_size > 4 * MAX_YAML_BYTES:  # before reading it (a config is a few hundred bytes)
            raise ConfigError(f"{field}: {str(path)!r} holds {p.stat().st_size} bytes, more than a config may")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{field}: cannot read {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    try:
        loaded = yaml_load(text, field)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{field}: {str(path)!r} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{field}: {str(path)!r} must hold a mapping of {what}, got {type(loaded).__name__}")
    if not all(isinstance(k, str) for k in loaded):
        bad = next(k for k in loaded if not isinstance(k, str))
        raise ConfigError(f"{field}: {str(path)!r}: keys must be names, got {short_repr(bad)}")
    return loaded


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict[str, Any] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `key=value` overrides.

    >>> load_config(None, ["lr=0.05", "schedule=linear"]).lr
    0.05
    """
    data: dict[str, Any] = {}
    if path is not None:
        data.update(read_yaml_mapping(path, "config", "key: value"))
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        data[key] = value
    return make_config(data)


def fitted_hparams(hparams: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    """A stored run's hyperparameters with its time fit applied (what `trainlab train --resume` trains):
    the fields `train.timefit.TimeFit` changed, stored in its summary as "fitted"."""
    fitted = (summary or {}).get("fitted") or {}
    if not fitted.get("config"):
        return hparams
    return {**hparams, **fitted["config"], "minutes": None}

