"""Small shared plumbing: atomic writes, the device choice and the series' cache location.

Every long-running step writes its outputs through these helpers, so a reader never sees
half a file, and every notebook resolves ``device="auto"`` and ``cache_dir=None`` the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "CLIPATTR_CACHE"


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` on a temp file beside ``path``, then rename it onto ``path``.

    The rename is atomic on one filesystem, so ``path`` is either the old file or the
    complete new one. The temp file is removed if ``writer`` fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 1, sort_keys: bool = True) -> Path:
    """JSON to ``path`` through a temp file, fsync and ``os.replace``; numpy values become lists."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=_json_default)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, writer)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Text to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> Path:
    """safetensors to ``path`` atomically; tensors are written as contiguous CPU copies."""
    from safetensors.torch import save_file

    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU; anything else as given.

    Asking for CUDA where there is none is an error, not a silent move to the CPU.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return dev


def default_cache_dir() -> Path:
    """Where the series keeps feature caches unless told otherwise, the same from any cwd.

    ``$CLIPATTR_CACHE`` when set; else ``.cache/`` in the repository checkout the package
    runs from; else (an installed copy with no checkout) ``~/.cache/clipattr``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / ".cache"
    return Path.home() / ".cache" / "clipattr"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` as an absolute path, or :func:`default_cache_dir` when None / empty."""
    if cache_dir is None or str(cache_dir) == "":
        return default_cache_dir()
    return Path(cache_dir).expanduser().resolve()


def resolve_out_dir(out_dir: str | os.PathLike | None, notebook: str) -> Path:
    """A notebook's output folder, created.

    ``out_dir`` as given (relative paths from the working directory); when None,
    ``runs/<notebook>`` in the repository checkout the package runs from (so a notebook
    writes to the same place whether opened from the repo root or from notebooks/), or in
    the working directory for an installed copy.
    """
    if out_dir is None or str(out_dir) == "":
        root = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
        path = root / "runs" / notebook
    else:
        path = Path(out_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["resolve_out_dir", "atomic_write", "write_json_atomic", "write_text_atomic", "save_tensors_atomic", "resolve_device",
           "default_cache_dir", "resolve_cache_dir", "REPO_ROOT", "CACHE_ENV"]
