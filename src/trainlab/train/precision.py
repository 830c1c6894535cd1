"""How a run computes: precision (autocast, and a GradScaler for fp16), torch.compile, channels-last.

`Execution.resolve` turns what the config asks for (`precision`, `compile`, `channels_last`) into what the
run does on its device, once, with the reason for every automatic choice; the run prints `describe()` with
its start lines and stores `summary()` with its plan. Requests the machine cannot honour are a ConfigError
on one line (fp16 autocast where torch lacks it, bf16 on a GPU without it, compile without a C++ compiler,
channels_last for inputs that are not images), raised before anything is stored.

The defaults: `precision: auto` is bf16 on a CUDA device that supports it (Ampere and newer) and fp32
everywhere else (on CPU, bf16 autocast is slower than fp32 on most processors without AMX); fp16 always
comes with a GradScaler (Micikevicius et al. 2018, "Mixed Precision Training"): the loss is scaled up
before backward so small gradients do not underflow, the gradients are unscaled before clipping and the
monitors, and a step whose gradients overflow is skipped while the scale backs off.

torch.compile wraps the module in an `OptimizedModule` whose state_dict keys carry an `_orig_mod.` prefix.
The loop never saves that wrapper: it keeps the plain module for the optimizer, the state_dict, the
checkpoints and evaluation, and runs only forward and backward through the compiled one (as it does with
the DDP wrapper). A task whose `build_model` returns `torch.compile(model)` is unwrapped the same way.

    ex = Execution.resolve(Config(precision="bf16"), torch.device("cpu"), input_dims=4)
    with ex.autocast():
        loss = loss_fn(net(x), y)
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from trainlab.config import Config, ConfigError

__all__ = ["Execution", "PRECISIONS", "input_dims", "compiler_available"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NULL = nullcontext()  # reusable: fp32 enters nothing per step


def _autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Does torch autocast `dtype` on `device_type`? (It warns and disables itself where it does not.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type)
        except (RuntimeError, ValueError):
            return False


def _scaler_works(device_type: str) -> bool:
    try:
        torch.amp.GradScaler(device_type)
        return True
    except (RuntimeError, ValueError, AttributeError):
        return False


def compiler_available() -> str | None:
    """The C++ compiler torch.compile (inductor) would use on CPU, or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        found = get_cpp_compiler()
        if found and shutil.which(found):
            return found
    except Exception:  # no inductor, or it found no compiler
        pass
    return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def input_dims(dataset) -> int | None:
    """Dimensions of one batch of `dataset`'s inputs (4 for images: N, C, H, W), or None if unknown
    (an iterable dataset, an item that is neither a tuple nor a dict)."""
    try:
        item = dataset[0]
    except Exception:
        return None
    if isinstance(item, (tuple, list)) and item:
        x = item[0]
    elif isinstance(item, dict):
        x = next((v for v in item.values() if torch.is_tensor(v) and v.dim() > 0), None)
    else:
        return None
    return x.dim() + 1 if torch.is_tensor(x) else None


@dataclass(frozen=True)
class Execution:
    """The resolved choices: `precision` (fp32, bf16, fp16) with `reason`, `compile` ("off", "torch.compile",
    "by the task's build_model"), `channels_last`, on `device_type`."""

    precision: str
    reason: str
    device_type: str
    compile: str = "off"
    channels_last: bool = False
    parallel: Any = field(default=None, compare=False)  # pipelined.PipelineRun under parallel=pipeline

    @classmethod
    def resolve(cls, hp: Config, device: torch.device, *, input_dims: int | None = None,
                user_compiled: bool = False) -> Execution:
        """What `hp` asks for, as this `device` can do it; a ConfigError naming the field otherwise."""
        kind = device.type
        precision, reason = hp.precision, "as configured"
        if precision == "auto":
            if kind == "cuda" and torch.cuda.is_bf16_supported():
                precision, reason = "bf16", "auto: bf16 on a CUDA device that supports it"
            elif kind == "cuda":
                precision, reason = "fp32", "auto: this GPU has no bf16 (set precision=fp16 for mixed precision)"
            else:
                precision, reason = "fp32", f"auto: fp32 on {kind}"
        dtype = PRECISIONS[precision]
        if dtype is not None:
            if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
                raise ConfigError(f"precision: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or "
                                  f"fp32, got {hp.precision!r}")
            if not _autocast_works(kind, dtype):
                raise ConfigError(f"precision: torch {torch.__version__} has no {precision} autocast on {kind}; "
                                  f"use fp32, got {hp.precision!r}")
            if precision == "fp16" and not _scaler_works(kind):
                raise ConfigError(f"precision: fp16 needs a GradScaler, which torch {torch.__version__} lacks on "
                                  f"{kind}; use bf16 or fp32, got {hp.precision!r}")
        compiled = "off"
        if user_compiled:
            compiled = "by the task's build_model"
        elif hp.compile:
            if kind == "cpu" and compiler_available() is None:
                raise ConfigError("compile: torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH, "
                                  "and none was found; install one or set compile=false, got True")
            compiled = "torch.compile"
        if hp.channels_last and input_dims is not None and input_dims != 4:
            raise ConfigError(f"channels_last: needs 4-D image batches (N, C, H, W), but this task's batches have "
                              f"{input_dims} dimensions; set channels_last=false, got True")
        return cls(precision, reason, kind, compiled, hp.channels_last)

    def with_pipeline(self, pipe: Any) -> Execution:
        """These choices for a pipelined run (`pipe`: a `pipelined.PipelineRun`, or None: unchanged). The
        pipeline trains in fp32: `precision: auto` resolves to it (explicit bf16/fp16 is refused earlier)."""
        if pipe is None:
            return self
        return replace(self, precision="fp32", reason="pipeline parallelism trains in fp32", parallel=pipe)

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self):
        """The context forward and loss run in: autocast to the dtype, or nothing for fp32."""
        return _NULL if self.dtype is None else torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh GradScaler for fp16 (its state is checkpointed with the run), else None."""
        return torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` in the run's memory format (channels-last for image models), in place."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def wrap(self, net: nn.Module) -> nn.Module:
        """What forward and backward run through: `net` compiled when asked (the plain module stays outside)."""
        return torch.compile(net) if self.compile == "torch.compile" else net

    def describe(self) -> str:
        """One line printed at the start: the precision and why, compile, memory format."""
        scaler = " with a GradScaler" if self.precision == "fp16" else ""
        line = (f"  precision {self.precision}{scaler} ({self.reason}); compile {self.compile}; "
                f"memory format {'channels_last' if self.channels_last else 'contiguous'}")
        return line + ("\n" + self.parallel.describe() if self.parallel is not None else "")

    def summary(self) -> dict[str, Any]:
        return {"precision": self.precision, "precision_reason": self.reason, "grad_scaler": self.precision == "fp16",
                "compile": self.compile, "channels_last": self.channels_last, "device_type": self.device_type,
                **({"pipeline": self.parallel.summary()} if self.parallel is not None else {})}
