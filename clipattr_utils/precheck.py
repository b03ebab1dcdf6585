# -*- coding: utf-8 -*-
"""What `make install` checks before it creates .venv: the Python version and the free disk.

Run by path (``python clipattr_utils/precheck.py --venv .venv``), before anything is installed,
with whatever ``python3`` the machine has: this file imports nothing from the package and parses
on old Pythons (no f-strings, no annotations), so it can say "too old" instead of failing with a
syntax error. Exit status 1 with a message on stderr when the install cannot work.

The install is about 5.5 GB (torch with its CUDA libraries, torchvision, open_clip and the rest),
and pip keeps the downloaded wheels in its cache while it installs; ``NEED_GB`` leaves room for
both. ``$CLIPATTR_INSTALL_GB`` overrides it (0 skips the disk check).
"""

from __future__ import print_function

import os
import sys

MIN_PYTHON = (3, 10)
NEED_GB = 6.0
"""Free space the install needs where .venv is created (GB = 1e9 bytes)."""
CACHE_NEED_GB = 3.0
"""Free space pip's download cache needs when it is on another filesystem than .venv."""
NEED_ENV = "CLIPATTR_INSTALL_GB"
_VERSION_ENV = "_CLIPATTR_PRECHECK_VERSION"  # tests: pretend to be this Python ("3.9.18")


def python_problem(version=None, executable=None):
    """A message when ``version`` (default: this interpreter's) is older than ``MIN_PYTHON``, else None."""
    if version is None:
        forced = os.environ.get(_VERSION_ENV)
        version = tuple(int(p) for p in forced.split(".")) if forced else tuple(sys.version_info[:3])
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    return ("clipattr needs Python {need} or newer; {exe} is Python {have}.\n"
            "Install Python {need}+ (e.g. apt-get install python3.11, or from python.org) and run "
            "`make demo PYTHON=python3.11` (any Python {need}+ command).\n"
            "Nothing was installed.").format(need=".".join(map(str, MIN_PYTHON)),
                                              have=".".join(map(str, version)),
                                              exe=executable or sys.executable or "python3")


def disk_problem(free_bytes, need_gb, where, what="the install (torch with its CUDA libraries, about 5.5 GB)"):
    """A message when ``free_bytes`` at ``where`` is less than ``need_gb`` GB, else None."""
    if need_gb <= 0 or free_bytes >= need_gb * 1e9:
        return None
    return ("Not enough free disk for {what}: {free:.1f} GB free at {where}, {need:.1f} GB needed.\n"
            "Free some space there, or set {env}=<GB> to change the requirement (0 skips this check).\n"
            "Nothing was installed.").format(what=what, free=free_bytes / 1e9, where=where, need=need_gb,
                                             env=NEED_ENV)


def _existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _free_bytes(path):
    import shutil

    return shutil.disk_usage(path).free


def _installed(venv):
    """True when .venv already holds torch (a re-install then downloads little)."""
    lib = os.path.join(venv, "lib")
    if not os.path.isdir(lib):
        return False
    for name in os.listdir(lib):
        if os.path.isdir(os.path.join(lib, name, "site-packages", "torch")):
            return True
    return False


def pip_cache_dir():
    if os.environ.get("PIP_NO_CACHE_DIR", "").lower() in ("1", "true", "yes", "on"):
        return None
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pip")


def _device(path):
    return os.stat(path).st_dev


def problems(venv=".venv", free_bytes=None, device=None):
    """Every reason the install cannot work here (empty when it can). ``free_bytes`` and
    ``device`` map an existing path to its free bytes and its filesystem (default: ask the OS)."""
    free_bytes = free_bytes or _free_bytes
    device = device or _device
    found = []
    problem = python_problem()
    if problem:
        return [problem]  # the disk does not matter then
    need = float(os.environ.get(NEED_ENV, NEED_GB))
    if need > 0 and not _installed(venv):
        where = _existing(venv)
        problem = disk_problem(free_bytes(where), need, where)
        if problem:
            found.append(problem)
        cache = pip_cache_dir()
        if cache and device(_existing(cache)) != device(where):
            cache = _existing(cache)
            problem = disk_problem(free_bytes(cache), min(need, CACHE_NEED_GB), cache,
                                   what="pip's download cache (the torch wheels)")
            if problem:
                found.append(problem)
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    venv = argv[argv.index("--venv") + 1] if "--venv" in argv else ".venv"
    found = problems(venv)
    for problem in found:
        print("error: " + problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
