"""Search spaces: a YAML mapping of `Config` field -> sampling function, parsed and validated up front.

```
lr: loguniform(1e-4, 1e-1)          # log-uniform float in [low, high]
dropout: uniform(0.0, 0.5)          # uniform float
width: int(32, 256, log)            # integer, optionally log-uniform
weight_decay: choice(0, 1e-5, 1e-4) # one of the values (categorical)
optimizer: grid(adam, sgd)          # the values, in this order, every one tried by --strategy grid
lr: logspace(1e-4, 1e-1, 4)         # grid(1e-4, 1e-3, 1e-2, 1e-1)
```

Every key must be a field of `Config`, every bound and value must be a value that field accepts, and
integer fields take only `int(...)`, `choice`, `grid` or `logspace`. A bad space raises `ConfigError` with
one line naming the key and what was given. `--strategy grid` needs every key discrete (`grid`,
`logspace` or `choice`); `random` and `tpe` treat `grid`/`logspace` values as a categorical choice.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from trainlab.config import Config, ConfigError, make_config, read_yaml_mapping, short_repr

__all__ = ["Param", "Space", "FUNCTIONS", "MAX_VALUES", "MAX_GRID", "load_space", "parse_space", "parse_param"]

MAX_VALUES = 10_000     # values of one choice/grid/logspace
MAX_GRID = 1_000_000    # points of a --strategy grid (Optuna's GridSampler lists every point up front)
FUNCTIONS = ("loguniform", "uniform", "int", "choice", "grid", "logspace")
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter.

    kind is "float" (low, high, log), "int" (low, high, log) or "values" (a tuple of values; `grid`
    says whether the user asked for a grid). `text` is what the user wrote, for messages and reports.
    """

    name: str
    kind: str
    text: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    values: tuple = ()
    grid: bool = False

    @property
    def discrete(self) -> bool:
        return self.kind == "values"

    def distribution(self):
        """The Optuna distribution that samples this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log)
        return CategoricalDistribution(self.values)

    def suggest(self, trial) -> Any:
        """Draw (or, under GridSampler, look up) this parameter's value for an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.values))


@dataclass(frozen=True)
class Space:
    """The parsed search space: parameters by name, in the order the user wrote them."""

    params: dict[str, Param]

    def __iter__(self):
        return iter(self.params.values())

    def __len__(self) -> int:
        return len(self.params)

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def grid(self) -> dict[str, list]:
        """{name: values} for Optuna's GridSampler; ConfigError naming the first continuous parameter."""
        for p in self:
            if not p.discrete:
                raise ConfigError(f"{p.name}: {_shown(p.text)} cannot be gridded; with --strategy grid use "
                                  "grid(...), logspace(a, b, n) or choice(...)")
        if self.grid_size() > MAX_GRID:
            raise ConfigError(f"space: the grid has {self.grid_size()} points, more than {MAX_GRID}; "
                              "use fewer values, or --strategy random")
        return {p.name: list(p.values) for p in self}

    def grid_size(self) -> int | None:
        """The number of grid points, or None when a parameter is continuous."""
        if not all(p.discrete for p in self):
            return None
        return math.prod(len(p.values) for p in self)

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self}

    def to_dict(self) -> dict[str, str]:
        """{name: text}: parses back to an equal Space; stored with a study."""
        return {p.name: p.text for p in self}


def _shown(text: str) -> str:
    """A spec as messages show it: cut when long, so an error stays one readable line."""
    return text if len(text) <= 100 else f"{text[:80]}... ({len(text)} characters)"


def _number(token: str) -> Any:
    """A literal: quoted string, true/false, null/none, int, float, or a bare word (a string)."""
    t = token.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _split_args(body: str) -> list[str]:
    """Split on commas outside quotes."""
    args, cur, quote = [], [], None
    for ch in body:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == ",":
            args.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    args.append("".join(cur))
    if len(args) == 1 and not args[0].strip():
        return []
    return args


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not one."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _field_is_int(name: str) -> bool:
    ann = Config.model_fields[name].annotation
    args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) else ()
    kinds = set(args) - {type(None)} if args else {ann}
    return kinds == {int}


def _check_value(name: str, text: str, value: Any, base: Config) -> None:
    """ConfigError when `base` with name=value does not validate."""
    try:
        make_config({**base.model_dump(), name: value})
    except ConfigError as err:
        detail = str(err)
        if detail.startswith(f"{name}: "):
            detail = detail[len(name) + 2:]
        elif detail.startswith("config: "):  # a rule across fields: its "got" is the whole config, left out
            detail = detail[len("config: "):].split(", got {")[0] + f" (with {name}={short_repr(value)})"
        raise ConfigError(f"{name}: {text}: {detail}") from None


def parse_param(name: str, spec: Any, base: Config | None = None) -> Param:
    """Parse one `key: function(args)` entry, checking it against `Config` (and `base`'s other values).

    >>> parse_param("lr", "loguniform(1e-4, 1e-1)").log
    True
    """
    base = base or Config()
    if name not in Config.model_fields:
        close = difflib.get_close_matches(name, Config.model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{name!r}: not a hyperparameter of Config{hint}" if not name.isidentifier()
                          else f"{name}: not a hyperparameter of Config{hint}")
    if not isinstance(spec, str):
        raise ConfigError(f"{name}: expected a function such as loguniform(1e-4, 1e-1) or choice(a, b), got {short_repr(spec)}")
    text = " ".join(spec.split())
    shown = _shown(text)
    m = _CALL.match(spec)
    if not m:
        raise ConfigError(f"{name}: cannot parse {shown!r}; expected a function such as loguniform(1e-4, 1e-1) "
                          "or choice(a, b)")
    fn, args = m.group(1), [_number(a) for a in _split_args(m.group(2))]
    if fn not in FUNCTIONS:
        close = difflib.get_close_matches(fn, FUNCTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{name}: unknown function {fn!r} in {shown!r}; use one of {', '.join(FUNCTIONS)}{hint}")
    is_int = _field_is_int(name)

    if fn in ("loguniform", "uniform"):
        if len(args) != 2 or not all(_is_number(a) for a in args):
            raise ConfigError(f"{name}: {shown}: expected {fn}(low, high) with two finite numbers")
        low, high = float(args[0]), float(args[1])
        if is_int:
            raise ConfigError(f"{name}: {shown}: {name} is an integer; use int(low, high) or int(low, high, log)")
        if low >= high:
            raise ConfigError(f"{name}: {shown}: low must be < high, got low {args[0]!r} >= high {args[1]!r}")
        if fn == "loguniform" and low <= 0:
            raise ConfigError(f"{name}: {shown}: a log scale needs low > 0, got {args[0]!r}")
        param = Param(name, "float", text, low=low, high=high, log=fn == "loguniform")
        checks = [low, high]
    elif fn == "int":
        if len(args) not in (2, 3) or not all(isinstance(a, int) and not isinstance(a, bool) for a in args[:2]):
            raise ConfigError(f"{name}: {shown}: expected int(low, high) or int(low, high, log) with integer bounds")
        if len(args) == 3 and args[2] != "log":
            raise ConfigError(f"{name}: {shown}: the third argument of int() can only be log, got {args[2]!r}")
        low, high, log = args[0], args[1], len(args) == 3
        if low >= high:
            raise ConfigError(f"{name}: {shown}: low must be < high, got low {low!r} >= high {high!r}")
        if log and low <= 0:
            raise ConfigError(f"{name}: {shown}: a log scale needs low > 0, got {low!r}")
        param = Param(name, "int", text, low=low, high=high, log=log)
        checks = [low, high]
    elif fn == "logspace":
        if (len(args) != 3 or not all(_is_number(a) for a in args[:2])
                or not isinstance(args[2], int) or isinstance(args[2], bool)):
            raise ConfigError(f"{name}: {shown}: expected logspace(low, high, n) with numbers low, high and an integer n")
        low, high, n = float(args[0]), float(args[1]), args[2]
        if low <= 0:
            raise ConfigError(f"{name}: {shown}: a log scale needs low > 0, got {args[0]!r}")
        if low >= high:
            raise ConfigError(f"{name}: {shown}: low must be < high, got low {args[0]!r} >= high {args[1]!r}")
        if not 2 <= n <= MAX_VALUES:
            raise ConfigError(f"{name}: {shown}: n must be in [2, {MAX_VALUES}], got {n!r}")
        a, b = math.log10(low), math.log10(high)
        # Rounded to 6 significant digits so that logspace(1e-4, 1e-1, 4) is exactly 1e-4, 1e-3, 1e-2, 1e-1.
        values = tuple(float(f"{10 ** (a + (b - a) * i / (n - 1)):.6g}") for i in range(n))
        if is_int:
            values = tuple(int(round(v)) for v in values)
            if len(set(values)) != n:
                raise ConfigError(f"{name}: {shown}: rounds to repeated integers {list(values)}")
        param = Param(name, "values", text, values=values, log=True, grid=True)
        checks = list(values)
    else:  # choice, grid
        if not args:
            raise ConfigError(f"{name}: {shown}: {fn}() needs at least one value")
        if len(args) > MAX_VALUES:
            raise ConfigError(f"{name}: {shown}: {fn}() takes at most {MAX_VALUES} values, got {len(args)}")
        bad = [a for a in args if not (a is None or isinstance(a, (bool, str)) or _is_number(a))]
        if bad:
            raise ConfigError(f"{name}: {shown}: values must be numbers, strings, true/false or null, got {bad[0]!r}")
        seen = set()
        for a in args:
            key = (type(a).__name__, a)
            if key in seen:
                raise ConfigError(f"{name}: {shown}: the value {a!r} is listed twice")
            seen.add(key)
        numbers = [a for a in args if _is_number(a)]
        log = len(numbers) == len(args) and len(args) > 2 and all(a > 0 for a in args) and \
            max(args) / min(args) >= 100
        param = Param(name, "values", text, values=tuple(args), log=log, grid=fn == "grid")
        checks = list(args)
    for value in checks:
        _check_value(name, shown, value, base)
    return param


def parse_space(data: Mapping[str, Any], base: Config | None = None) -> Space:
    """Parse a mapping of key -> function text (what a space YAML holds) into a validated Space."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"space: expected a mapping of hyperparameter: function, got {type(data).__name__}")
    if not data:
        raise ConfigError("space: no hyperparameters to search; add e.g. 'lr: loguniform(1e-4, 1e-1)'")
    return Space({str(k): parse_param(str(k), v, base) for k, v in data.items()})


def load_space(path: str | Path, base: Config | None = None) -> Space:
    """Read and parse a space YAML file."""
    return parse_space(read_yaml_mapping(path, "space", "hyperparameter: function"), base)
