"""The error messages a newcomer meets first, each saying what is wrong and what to do:

* ``make install`` (and so ``make demo`` / ``make test``) on a Python older than 3.10, or without
  the disk the install needs, stops before creating .venv (``clipattr_utils/precheck.py``);
* a second ``make demo`` while the first still runs on the same feature cache is refused, naming
  the first (``series.acquire_series_lock``);
* a preset name with a typo lists the presets and suggests the closest.

Nothing here installs anything or fills a disk: the checks take the numbers as arguments, and the
Makefile is run in a scratch copy with the test's override of the requirement or the version.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from clipattr_utils import precheck, series

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9


# --------------------------------------------------------------------------- Python version


def test_python_older_than_3_10_is_named_with_what_to_do():
    message = precheck.python_problem((3, 9, 18), "/usr/bin/python3")
    assert "needs Python 3.10 or newer" in message and "/usr/bin/python3 is Python 3.9.18" in message
    assert "PYTHON=" in message and "Nothing was installed" in message
    assert precheck.python_problem((3, 10, 0)) is None and precheck.python_problem((3, 13, 1)) is None
    assert precheck.python_problem((2, 7, 18)) is not None


def test_precheck_parses_on_old_pythons():
    """It must run on the Python it rejects: no f-strings, no annotations, no new syntax."""
    source = (ROOT / "clipattr_utils" / "precheck.py").read_text(encoding="utf-8")
    strings = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
               if t.type == tokenize.STRING or t.type == getattr(tokenize, "FSTRING_START", -1)]
    assert not [s for s in strings if s.split("'")[0].split('"')[0].lower().count("f")], "an f-string"
    assert "from __future__ import annotations" not in source
    tree = ast.parse(source, feature_version=(3, 4))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.AnnAssign, ast.NamedExpr))]
    assert all(not (a.annotation or False) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
               for a in f.args.args) and all(f.returns is None for f in ast.walk(tree)
                                              if isinstance(f, ast.FunctionDef))


# --------------------------------------------------------------------------- disk


def test_disk_check_says_how_much_is_needed(tmp_path, monkeypatch):
    message = precheck.disk_problem(2.4 * GB, 6.0, "/data/me")
    assert "2.4 GB free at /data/me, 6.0 GB needed" in message and "CLIPATTR_INSTALL_GB" in message
    assert precheck.disk_problem(6.0 * GB, 6.0, "/data/me") is None
    assert precheck.disk_problem(0, 0, "/data/me") is None  # 0 skips the check
    monkeypatch.delenv(precheck.NEED_ENV, raising=False)
    monkeypatch.delenv("_CLIPATTR_PRECHECK_VERSION", raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    venv = tmp_path / ".venv"
    found = precheck.problems(str(venv), free_bytes=lambda path: 1 * GB)
    assert len(found) == 1 and f"{precheck.NEED_GB:.1f} GB needed" in found[0] and str(tmp_path) in found[0]
    assert precheck.problems(str(venv), free_bytes=lambda path: 50 * GB) == []
    # an installed .venv (torch is there) downloads little: no disk check
    (venv / "lib" / "python3.11" / "site-packages" / "torch").mkdir(parents=True)
    assert precheck.problems(str(venv), free_bytes=lambda path: 0) == []


def test_disk_check_counts_pip_cache_on_another_filesystem(tmp_path, monkeypatch):
    monkeypatch.delenv(precheck.NEED_ENV, raising=False)
    monkeypatch.delenv("PIP_NO_CACHE_DIR", raising=False)
    monkeypatch.delenv("_CLIPATTR_PRECHECK_VERSION", raising=False)
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "cache" / "pip"))
    venv = str(tmp_path / "work" / ".venv")
    free = {str(tmp_path / "cache"): 0.5 * GB}
    on_two = {str(tmp_path / "cache"): 2}  # the cache on filesystem 2, the rest on 1
    found = precheck.problems(venv, free_bytes=lambda p: free.get(p, 50 * GB), device=lambda p: on_two.get(p, 1))
    assert len(found) == 1 and "pip's download cache" in found[0] and "0.5 GB free at" in found[0]
    assert "3.0 GB needed" in found[0]
    # the same filesystem: counted once, in the 6 GB
    assert precheck.problems(venv, free_bytes=lambda p: free.get(p, 50 * GB), device=lambda p: 1) == []


def _scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "clipattr_utils").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo)
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copy(ROOT / "clipattr_utils" / "precheck.py", repo / "clipattr_utils")
    return repo


def _make_install(repo: Path, python: str, **env) -> subprocess.CompletedProcess:
    if not shutil.which("make"):
        pytest.skip("no make here")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPATTR_INSTALL", "_CLIPATTR"))}
    full.update(env)
    return subprocess.run(["make", "install", f"PYTHON={python}"], cwd=repo, env=full, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("case", ["old python", "no disk", "no python"])
def test_make_install_stops_before_creating_the_venv(tmp_path, case):
    repo = _scratch_repo(tmp_path)
    if case == "old python":
        proc = _make_install(repo, sys.executable, _CLIPATTR_PRECHECK_VERSION="3.9.18")
        expected = "needs Python 3.10 or newer"
    elif case == "no disk":
        proc = _make_install(repo, sys.executable, CLIPATTR_INSTALL_GB="1000000")
        expected = "GB needed"
    else:
        proc = _make_install(repo, "python3.99-not-here")
        expected = "no 'python3.99-not-here' command: clipattr needs Python 3.10 or newer"
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / ".venv").exists(), "the venv was created before the check"


# --------------------------------------------------------------------------- a second make demo


def test_second_series_on_the_same_cache_is_refused(tmp_path, capsys):
    cache, first_out = tmp_path / "cache", tmp_path / "first"
    held = series.acquire_series_lock(cache, first_out, "sandbox")
    try:
        with pytest.raises(series.SeriesBusyError) as err:
            series.acquire_series_lock(cache, tmp_path / "second", "sandbox-fast")
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and "preset sandbox," in message and str(first_out) in message
        assert "CACHE_DIR=" in message and "Nothing was run" in message
        # the CLI: status 3, the message on stderr, no run folder
        second = tmp_path / "second-run"
        assert series.main(["--preset", "sandbox-fast", "--cache-dir", str(cache), "--out", str(second)]) == 3
        assert "another series is already running" in capsys.readouterr().err
        assert not second.exists()
        # another cache is another series: it may run beside the first
        os.close(series.acquire_series_lock(tmp_path / "other-cache", second, "sandbox"))
    finally:
        os.close(held)
    os.close(series.acquire_series_lock(cache, tmp_path / "third", "sandbox"))  # released: free again


def test_second_make_demo_process_is_refused(tmp_path):
    """Two processes, as two terminals would be: the second exits with status 3 at once."""
    cache = tmp_path / "cache"
    held = series.acquire_series_lock(cache, tmp_path / "first", "sandbox")
    try:
        proc = subprocess.run([sys.executable, "-m", "clipattr_utils.series", "--preset", "sandbox-fast",
                               "--cache-dir", str(cache), "--out", str(tmp_path / "second")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        os.close(held)
    assert proc.returncode == 3, proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "Wait for it to finish" in proc.stderr
    assert not (tmp_path / "second").exists()


def test_make_demo_passes_its_cache_dir():
    makefile = (ROOT / "Makefile").read_text()
    assert "$(if $(CACHE_DIR),--cache-dir $(CACHE_DIR))" in makefile


# --------------------------------------------------------------------------- preset typo


def test_preset_typo_lists_the_presets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clipattr_utils.series", "--preset", "sandbx",
                           "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Unknown preset 'sandbx'" in proc.stderr and "Did you mean 'sandbox'?" in proc.stderr
    for name in series.preset_names():
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
    with pytest.raises(series.PresetError) as err:
        series.load_preset("no-such-thing-at-all")
    assert "Did you mean" not in str(err.value) and "sandbox-fast" in str(err.value)
