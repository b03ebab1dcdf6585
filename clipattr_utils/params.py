"""Catch mistyped notebook parameters: ``papermill nb.ipynb out.ipynb -p sed 1`` must stop, not
run with the default seed after one log line.

Each notebook's ``parameters`` cell ends with ``_declared = set(globals())``: the names it
declares (plus the kernel's own). Papermill injects its parameters in the next cell, so the
first cell after that compares and stops on any name the notebook never declared.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class UnknownParameterError(ValueError):
    """A parameter was injected that the notebook does not declare."""


def check_injected(namespace: dict[str, Any], declared: Iterable[str], notebook: str) -> None:
    """Raise `UnknownParameterError` naming every public name in ``namespace`` that is not in
    ``declared`` (names starting with "_" are the kernel's or this check's own).

    Checks once per kernel: it marks ``namespace`` (``_parameters_checked``), so re-running the
    cell later in JupyterLab, when the notebook's own names exist, does not stop."""
    if namespace.get("_parameters_checked"):
        return
    known = set(declared)
    unknown = sorted(k for k in namespace if not k.startswith("_") and k not in known)
    if unknown:
        params = sorted(k for k in known if not k.startswith("_") and k not in _KERNEL_NAMES)
        raise UnknownParameterError(
            f"{notebook}: unknown parameter(s) {unknown} (injected by papermill or set before this cell); "
            f"this notebook declares {params}")
    namespace["_parameters_checked"] = True


# Names IPython puts in every kernel namespace; never parameters.
_KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})

__all__ = ["check_injected", "UnknownParameterError"]
