"""PEP 562 for a package whose names are imported on first use, so a light command or a reader of one
submodule does not pay for the heavy ones (torch, numpy, the web stack)."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy(package: str, where: dict[str, str], names: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`: `where` maps each name to the submodule
    (relative to `package`) that defines it; `names` is what `dir()` lists (the package's `__all__`)."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
