"""A structural description of an image preprocessing pipeline, for cache keys.

``repr`` of a torchvision transform can hold a memory address (open_clip's validation
transform holds a bare function), which would change a feature cache's key in every
process. :func:`describe_transform` walks the pipeline instead: each step's class and its
parameters, functions by module and qualified name, never an address.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


class TransformKeyError(TypeError):
    """A preprocessing step cannot be described without its memory address."""


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_MAX_DEPTH = 16
_MAX_LISTED = 64  # tensors/arrays with more elements are keyed by a hash of their bytes


def describe_transform(transform: Any) -> Any:
    """A JSON-able description of an image transform that is equal in every process.

    ``repr()`` is not usable as a key: open_clip's validation transform may hold a bare function
    (``_convert_to_rgb``), a ``Lambda`` or a class without ``__repr__``, whose repr carries a
    memory address. Instead, the transform is walked:

    - an object (``Compose``, ``Resize``, ``Normalize``, open_clip's ``ResizeKeepRatio``, your
      own class): its class (module + qualname) and its public attributes, described
      recursively (``Compose.transforms`` in order; enums such as the interpolation mode by
      name; tuples as lists; tensors by value); an ``nn.Module`` adds its parameters, buffers
      and submodules. Private attributes (``_x``) are not part of the key. An object may
      instead provide a ``clipattr_key()`` method returning JSON-able settings;
    - a plain function: its module + qualname (plus its closure and defaults, if any); a
      ``lambda`` also by a fingerprint of its bytecode, since every lambda is ``<lambda>``;
    - ``functools.partial`` and bound methods: the function and its bound arguments / object.

    Raises:
        TransformKeyError: naming the offending step (e.g. ``preprocess.transforms[2].lock``)
        when something can only be told apart by its address.
    """
    return _describe(transform, "preprocess", (), 0)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or 'builtins'}.{getattr(obj, '__qualname__', None) or obj.__name__}"


def _fail(where: str, obj: Any, why: str) -> TransformKeyError:
    return TransformKeyError(
        f"Cannot key the feature cache on the preprocessing: {where} ({type(obj).__module__}."
        f"{type(obj).__qualname__}) {why}. Give it public JSON-able attributes or a clipattr_key() method "
        "returning its settings, or use a module-level function."
    )


def _describe(obj: Any, where: str, path: tuple, depth: int) -> Any:
    import enum
    import functools
    import inspect
    import types

    if depth > _MAX_DEPTH:
        raise _fail(where, obj, f"is nested more than {_MAX_DEPTH} levels deep")
    if obj is None or isinstance(obj, (bool, int)) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else repr(obj)  # NaN would not compare equal after a JSON round trip
    if isinstance(obj, str):
        if _ADDRESS.search(obj):
            raise _fail(where, obj, f"is a string holding a memory address ({obj[:80]!r})")
        return obj
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, (bytes, bytearray)):
        return {"bytes_sha256": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, np.generic):
        return _describe(obj.item(), where, path, depth + 1)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        if isinstance(obj, torch.Tensor):
            arr = obj.detach().cpu().contiguous()
            size, raw = arr.numel(), (lambda: arr.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            arr = np.ascontiguousarray(obj)
            size, raw = arr.size, arr.tobytes
        out = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
        if size <= _MAX_LISTED:
            return {**out, "values": _describe(arr.tolist(), where, (), depth + 1)}
        return {**out, "sha256": hashlib.sha256(raw()).hexdigest()}

    if id(obj) in path:
        raise _fail(where, obj, "refers back to itself")
    path = path + (id(obj),)
    if isinstance(obj, (list, tuple)):
        return [_describe(v, f"{where}[{i}]", path, depth + 1) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        items = [(_dict_key(k, where, obj), v) for k, v in obj.items()]
        return {k: _describe(v, f"{where}[{k!r}]", path, depth + 1) for k, v in sorted(items)}
    if isinstance(obj, (set, frozenset)):
        parts = [_describe(v, f"{where}{{...}}", path, depth + 1) for v in obj]
        return sorted(parts, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, type):
        return {"class": _qualname(obj)}
    if isinstance(obj, functools.partial):
        return {"partial": _describe(obj.func, f"{where}.func", path, depth + 1),
                "args": _describe(list(obj.args), f"{where}.args", path, depth + 1),
                "keywords": _describe(dict(obj.keywords), f"{where}.keywords", path, depth + 1)}
    if inspect.ismethod(obj):
        return {"method": _qualname(obj.__func__), "of": _describe(obj.__self__, f"{where}.__self__", path, depth + 1)}
    if isinstance(obj, types.FunctionType):
        return _describe_function(obj, where, path, depth)
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        owner = getattr(obj, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            return {"method": _qualname(obj), "of": _describe(owner, f"{where}.__self__", path, depth + 1)}
        return {"function": _qualname(obj)}

    own_key = getattr(type(obj), "clipattr_key", None)
    if callable(own_key):
        return {"type": _qualname(type(obj)), "key": _describe(obj.clipattr_key(), f"{where}.clipattr_key()", path,
                                                              depth + 1)}
    attrs = _public_state(obj)
    if attrs is None:
        raise _fail(where, obj, "has no attributes to describe it by (no __dict__ or __slots__)")
    out: dict[str, Any] = {"type": _qualname(type(obj))}
    out["params"] = {k: _describe(v, f"{where}.{k}", path, depth + 1) for k, v in sorted(attrs.items())}
    if isinstance(obj, torch.nn.Module):
        for kind, table in (("parameters", obj._parameters), ("buffers", obj._buffers), ("modules", obj._modules)):
            present = {k: v for k, v in table.items() if v is not None}
            if present:
                out[kind] = {k: _describe(v, f"{where}.{k}", path, depth + 1) for k, v in sorted(present.items())}
    return out


def _dict_key(k: Any, where: str, d: dict) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, (int, float, bool)) or k is None:
        return repr(k)
    import enum

    if isinstance(k, enum.Enum):
        return f"{type(k).__qualname__}.{k.name}"
    raise _fail(where, d, f"has a key of type {type(k).__name__} that cannot be written as JSON")


def _public_state(obj: Any) -> dict[str, Any] | None:
    """Public instance attributes from ``__dict__`` and ``__slots__``; None when there are neither."""
    found = False
    attrs: dict[str, Any] = {}
    if hasattr(obj, "__dict__"):
        found = True
        attrs.update({k: v for k, v in vars(obj).items() if not k.startswith("_")})
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        slots = (slots,) if isinstance(slots, str) else slots
        for name in slots:
            if name in ("__dict__", "__weakref__"):
                continue
            found = True
            if not name.startswith("_") and hasattr(obj, name):
                attrs[name] = getattr(obj, name)
    if isinstance(obj, torch.nn.Module):
        attrs.pop("training", None)  # train/eval mode does not change a deterministic transform
    return attrs if found else None


def _describe_function(fn, where: str, path: tuple, depth: int) -> dict:
    out: dict[str, Any] = {"function": _qualname(fn)}
    if "<lambda>" in fn.__qualname__:
        out["code"] = _code_fingerprint(fn.__code__)
    if fn.__closure__:
        names = fn.__code__.co_freevars
        cells = {}
        for name, cell in zip(names, fn.__closure__):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = None
            cells[name] = _describe(value, f"{where} (closure variable {name!r})", path, depth + 1)
        out["closure"] = cells
    if fn.__defaults__:
        out["defaults"] = _describe(list(fn.__defaults__), f"{where} (defaults)", path, depth + 1)
    if fn.__kwdefaults__:
        out["kwdefaults"] = _describe(dict(fn.__kwdefaults__), f"{where} (keyword defaults)", path, depth + 1)
    return out


def _code_fingerprint(code) -> str:
    """sha256 of a code object's bytecode, names and constants (nested code objects included).

    Tells apart two ``lambda``s with the same qualname; it depends on the Python version.
    """
    h = hashlib.sha256()

    def feed(c) -> None:
        h.update(c.co_code)
        h.update(repr((c.co_names, c.co_varnames, c.co_freevars, c.co_argcount)).encode())
        for const in c.co_consts:
            if hasattr(const, "co_code"):
                feed(const)
            elif isinstance(const, frozenset):  # iteration order depends on hash randomisation
                h.update(repr(sorted(repr(v) for v in const)).encode())
            else:
                h.update(repr(const).encode())

    feed(code)
    return h.hexdigest()[:16]


__all__ = ["describe_transform", "TransformKeyError"]
