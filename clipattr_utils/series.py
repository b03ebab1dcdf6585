"""Run the numbered notebook series headlessly with papermill: ``python -m clipattr_utils.series``.

``python -m clipattr_utils.series --preset sandbox [--only 02,04] [--out DIR]`` executes the
notebooks a preset (``notebooks/params/<name>.yaml``) lists into ``runs/<timestamp>-<preset>/``:
the executed notebooks, an HTML export of each, their figures, and ``index.html`` with every
notebook's headline numbers and the latent atlas (:mod:`clipattr_utils.report`).

Presets are checked against each notebook's ``parameters`` cell before anything runs. A failing
notebook is reported with its cell and error; the notebooks that do not depend on it still run,
and the command exits with status 1. A bad preset (an unknown name is answered with the list of
presets) exits with status 2, and a second series started while one runs with the same feature
cache is refused with status 3; both before anything runs.
"""

from __future__ import annotations

import argparse
import ast
import base64
import difflib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .storage import atomic_write, resolve_cache_dir, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PARAMS_DIR = NOTEBOOKS / "params"
STATUS_FILE = "series.json"

# Set by the runner, never by a preset: the run's folders and what earlier notebooks produced.
RUNNER_PARAMS = ("cache_dir", "out_dir", "sae_dir", "labels_csv")
# Which notebooks need another one's output: 02-04 explain the SAE notebook 01 trains (their
# `sae_dir`). If 01 fails they are skipped rather than silently training SAEs of their own.
DEPENDS_ON: dict[str, tuple[str, ...]] = {"02": ("01",), "03": ("01",), "04": ("01",)}
# Relative string values of these parameters are paths from the repository root (the kernel
# runs in notebooks/, so "data/imagenet" would otherwise point into notebooks/data).
PATH_SUFFIXES = ("_root", "_dir", "_csv", "_path")


class PresetError(ValueError):
    """A preset that does not fit the notebooks; raised before any notebook runs."""


@dataclass
class Preset:
    name: str
    source: Path
    notebooks: list[str] | None  # notebook numbers, None: every notebook found
    shared: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class NotebookRun:
    """What happened to one notebook; ``series.json`` holds a list of these."""
    number: str
    name: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    parameters: dict = field(default_factory=dict)
    cell: int | None = None  # 1-based cell of the executed notebook that raised
    execution_count: int | None = None
    error: str = ""  # the traceback's last line, or why it was skipped


def preset_names(params_dir: Path = PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(params_dir).glob("*.yaml"))


def load_preset(preset: str | os.PathLike, params_dir: Path = PARAMS_DIR) -> Preset:
    """A preset by name (``params_dir/<name>.yaml``) or by the path of a YAML file."""
    import yaml

    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(params_dir) / f"{preset}.yaml"
        if not path.is_file():
            names = preset_names(params_dir)
            close = difflib.get_close_matches(str(preset), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PresetError(f"Unknown preset {str(preset)!r}; choose one of {', '.join(names)} "
                              f"(files in {params_dir}) or pass a .yaml file.{hint}")
    elif not path.is_file():
        raise PresetError(f"Preset file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise PresetError(f"Preset {path}: expected a mapping at the top level, got {type(data).__name__}")
    notebooks = data.pop("notebooks", None)
    if notebooks is not None:
        notebooks = [_number(n, path) for n in notebooks]
    sections, shared = {}, {}
    for key, value in data.items():
        if _is_number(key):
            if not isinstance(value, dict):
                raise PresetError(f"Preset {path}: section {key!r} must map parameter names to values")
            sections[_number(key, path)] = value
        else:
            shared[str(key)] = value
    return Preset(path.stem, path, notebooks, shared, sections)


def _is_number(key: Any) -> bool:
    return (isinstance(key, int) and 0 <= key < 100) or (isinstance(key, str) and len(key) == 2 and key.isdigit())


def _number(key: Any, path: Path) -> str:
    if not _is_number(key):
        raise PresetError(f"Preset {path}: {key!r} is not a two-digit notebook number like \"02\"")
    # YAML reads an unquoted 05 as the int 5.
    return f"{int(key):02d}"


def notebook_parameters(path: Path) -> dict[str, dict]:
    """name -> ``{"default": source text, "help": its comment}`` from the `parameters` cell.

    Read with ``ast`` rather than papermill's line regex, which skips a parameter whose comment
    contains an ``=`` (e.g. notebook 02's ``labeler_name``); the comment includes the
    comment-only lines that continue it.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise PresetError(f"notebook {Path(path).name} has no cell tagged 'parameters'")
    source = cells[0].source
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is None:
                continue
            last = lines[node.end_lineno - 1]
            comment = [last.partition("#")[2].strip()] if "#" in last else []
            for line in lines[node.end_lineno:]:
                if not line.strip().startswith("#") or not line.startswith((" ", "\t")):
                    break
                comment.append(line.strip().lstrip("#").strip())
            for t in targets:
                if isinstance(t, ast.Name) and not t.id.startswith("_"):  # "_declared": bookkeeping, not a parameter
                    out[t.id] = {"default": ast.get_source_segment(source, node.value), "help": " ".join(comment)}
    return out


def _default_value(source: str) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return _Unknown  # an expression: no type to check against


class _Unknown:
    pass


def type_problem(name: str, value: Any, spec: dict) -> str | None:
    """Why ``value`` does not fit the parameter ``spec`` (papermill's), or None when it does."""
    default = _default_value(str(spec.get("default", "None")))
    if default is None or default is _Unknown:
        return None
    if value is None:
        # Parameters whose comment documents None (e.g. "None: skip") take it.
        return None if "None" in str(spec.get("help", "")) else f"None, but its default is {default!r} " \
                                                                   "and its comment does not allow None"
    expected = type(default)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),  # int widens to float
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, (list, tuple)),
        tuple: lambda v: isinstance(v, (list, tuple)),
        dict: lambda v: isinstance(v, dict),
    }.get(expected)
    if ok is None or ok(value):
        return None
    hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if expected is float and isinstance(value, str) else ""
    return f"{type(value).__name__} {value!r}, but its default {default!r} is a {expected.__name__}{hint}"


def resolve_paths(params: dict[str, Any], root: Path = REPO) -> dict[str, Any]:
    """Relative string values of path-like parameters made absolute from ``root``."""
    out = dict(params)
    for name, value in params.items():
        is_path = name.endswith(PATH_SUFFIXES) or (name == "pretrained" and isinstance(value, str) and "/" in value)
        if is_path and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            out[name] = str((root / value).resolve())
    return out


def plan(preset: Preset, notebooks: list[Path]) -> dict[Path, dict[str, Any]]:
    """The preset's parameters for each notebook, checked; raises :class:`PresetError` naming
    every unknown parameter or mistyped value with its notebook."""
    declared = {p: notebook_parameters(p) for p in notebooks}
    by_number = {p.name[:2]: p for p in notebooks}
    problems = []
    for number in preset.sections:
        if number not in by_number:
            problems.append(f"section \"{number}\": no notebook {number}_*.ipynb in this run "
                            f"(notebooks: {', '.join(p.name for p in notebooks)})")
    for name in preset.shared:
        if name in RUNNER_PARAMS:
            problems.append(f"parameter {name!r}: set by the series itself, not by a preset")
        elif not any(name in d for d in declared.values()):
            problems.append(f"shared parameter {name!r}: declared by none of "
                            f"{', '.join(p.name for p in notebooks)}")
    out = {}
    for path in notebooks:
        spec = declared[path]
        params = {k: v for k, v in preset.shared.items() if k in spec and k not in RUNNER_PARAMS}
        for name, value in preset.sections.get(path.name[:2], {}).items():
            if name in RUNNER_PARAMS:
                problems.append(f"parameter {name!r} of {path.name}: set by the series itself, not by a preset")
            elif name not in spec:
                problems.append(f"parameter {name!r} is not declared by notebook {path.name} "
                                f"(its parameters: {', '.join(spec)})")
            else:
                params[name] = value
        for name, value in params.items():
            why = type_problem(name, value, spec[name])
            if why:
                problems.append(f"parameter {name!r} of notebook {path.name}: {why}")
        out[path] = resolve_paths(params)
    if problems:
        raise PresetError(f"Preset {preset.name!r} ({preset.source}) does not fit the notebooks; nothing was run:\n  "
                          + "\n  ".join(problems))
    return out


def select_notebooks(preset: Preset, notebooks_dir: Path, only: list[str] | None) -> list[Path]:
    found = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"No notebooks NN_*.ipynb found in {notebooks_dir}")
    numbers = {p.name[:2] for p in found}
    wanted = preset.notebooks if preset.notebooks is not None else sorted(numbers)
    missing = [n for n in wanted if n not in numbers]
    if missing:
        raise PresetError(f"Preset {preset.name!r} lists notebooks {missing} that are not in {notebooks_dir}")
    if only:
        only = parse_only(only)
        bad = [n for n in only if n not in wanted]
        if bad:
            raise PresetError(f"--only {','.join(bad)}: not among the preset {preset.name!r}'s notebooks "
                              f"({', '.join(wanted)})")
        wanted = [n for n in wanted if n in only]
    return [p for p in found if p.name[:2] in wanted]


def parse_only(only: list[str] | str) -> list[str]:
    """``["02,04"]``, ``["02", "04"]`` or ``"2, 4"`` -> ``["02", "04"]``."""
    items = [only] if isinstance(only, str) else list(only)
    out = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            if not part.isdigit():
                raise PresetError(f"--only: {part!r} is not a notebook number (e.g. --only 02,04)")
            out.append(f"{int(part):02d}")
    return out


def run_series(preset: str | os.PathLike = "sandbox", out: Path | None = None, only: list[str] | None = None,
               cache_dir: Path | None = None, notebooks_dir: Path = NOTEBOOKS, params_dir: Path = PARAMS_DIR,
               report: bool = True) -> Path:
    """Execute the preset's notebooks in order into ``out`` (default ``runs/<timestamp>-<preset>``);
    returns the run folder. Its ``series.json`` says which notebooks failed (:func:`run_failed`).

    Raises :class:`PresetError` for a bad preset and :class:`SeriesBusyError` while another series
    runs with the same ``cache_dir``, both before anything runs or is written."""
    spec = load_preset(preset, params_dir)
    notebooks = select_notebooks(spec, notebooks_dir, only)
    # The whole preset is checked, also with --only, before the first cell: a bad preset runs nothing.
    planned = plan(spec, select_notebooks(spec, notebooks_dir, None))
    out = Path(out) if out else REPO / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}"
    cache_dir = resolve_cache_dir(cache_dir)
    lock = acquire_series_lock(cache_dir, out, spec.name)  # a second run on the same cache stops here
    try:
        return _run_locked(spec, notebooks, planned, out, cache_dir, notebooks_dir, report)
    finally:
        if lock is not None:
            os.close(lock)


def _run_locked(spec: Preset, notebooks: list[Path], planned: dict, out: Path, cache_dir: Path,
                notebooks_dir: Path, report: bool) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out.mkdir(parents=True, exist_ok=True)
    # The widgets render as static tables and figures by themselves: the kernel sees that
    # papermill's client has no frontend (clipattr_utils.widgets.batch_client).
    produced: dict[str, str] = {}
    runs: list[NotebookRun] = []
    not_ok: set[str] = set()
    t_series = time.time()
    _log(f"preset {spec.name} ({spec.source}): {', '.join(p.stem for p in notebooks)} -> {out}")
    for i, path in enumerate(notebooks, 1):
        number = path.name[:2]
        blocked = [d for d in DEPENDS_ON.get(number, ()) if d in not_ok]
        if blocked:
            run = NotebookRun(number, path.stem, "skipped",
                              error=f"skipped: needs notebook {', '.join(blocked)}, which did not complete")
            _log(f"[{i}/{len(notebooks)}] {path.stem}: {run.error}")
            runs.append(run)
            not_ok.add(number)
            continue
        declared = notebook_parameters(path)
        shared = {**produced, "cache_dir": str(cache_dir), "out_dir": str((out / path.stem).resolve())}
        params = {**{k: v for k, v in shared.items() if k in declared}, **planned[path]}
        run = NotebookRun(number, path.stem, "ok", parameters=params)
        _log(f"[{i}/{len(notebooks)}] {path.stem} " + json.dumps({k: v for k, v in params.items()
                                                                  if k not in ("cache_dir", "out_dir")}))
        t0 = time.time()
        try:
            papermill.execute_notebook(
                str(path), str(out / path.name), parameters=params, kernel_name="python3", cwd=str(notebooks_dir),
                progress_bar={"desc": f"  {path.stem}", "file": sys.stderr, "unit": "cell",
                              "bar_format": "{desc}: cell {n_fmt}/{total_fmt} [{elapsed} elapsed]"})
        except PapermillExecutionError as e:
            run.status, run.cell, run.execution_count = "failed", e.cell_index + 1, e.exec_count
            run.error = f"{e.ename}: {e.evalue}".strip()
        except Exception as e:  # the kernel died, a timeout, a missing kernel: still report and go on
            run.status, run.error = "failed", f"{type(e).__name__}: {e}".strip().splitlines()[-1]
        run.seconds = round(time.time() - t0, 1)
        if run.status == "failed":
            not_ok.add(number)
            where = f" at cell {run.cell} (In [{run.execution_count}])" if run.cell else ""
            _log(f"  {path.stem} FAILED{where} after {run.seconds:.0f} s: {run.error}")
        else:
            _log(f"  {path.stem} done in {run.seconds:.0f} s")
            # The SAE trained by 01 is the one the later notebooks explain (no second training).
            sae_dir = out / path.stem / "sae"
            if number == "01" and (sae_dir / "cfg.json").is_file():
                produced["sae_dir"] = str(sae_dir.resolve())
            # 02's labels name 04's flagged latents, valid only when both explain 01's SAE.
            labels = out / path.stem / "latents.csv"
            if number == "02" and "sae_dir" in produced and labels.is_file():
                produced["labels_csv"] = str(labels.resolve())
        if (out / path.name).is_file():
            try:
                export_notebook(out / path.name)
            except Exception as e:  # the run's results matter more than one HTML page
                _log(f"  {path.stem}: HTML export failed: {type(e).__name__}: {e}")
        runs.append(run)
        _write_status(out, spec, runs, time.time() - t_series)
    _write_status(out, spec, runs, time.time() - t_series)
    if report:
        from .report import write_index

        index = write_index(out)
        _log(f"index: {index}")
    return out


SERIES_LOCK = ".series.lock"
"""In the feature-cache folder: the file a running series holds (``flock``), saying whose it is."""


class SeriesBusyError(RuntimeError):
    """Another series is running with the same feature cache."""


def acquire_series_lock(cache_dir: Path, out: Path, preset_name: str) -> int | None:
    """A descriptor holding ``cache_dir/.series.lock``; raises :class:`SeriesBusyError` naming the
    holder when another series holds it. The kernel's lock (``flock``): a killed run releases it.

    The caches themselves would be shared safely (``features.extract`` waits for a cache another
    process is writing), but a second `make demo` started by mistake would halve the speed of
    both on a small machine and mix their progress lines, so it is refused with what to do.
    Without ``fcntl`` (Windows) there is no lock and None is returned."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / SERIES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "it has not said who it is yet"
        os.close(fd)
        raise SeriesBusyError(
            f"another series is already running with the feature cache {cache_dir} ({holder}).\n"
            f"Wait for it to finish (its progress is in the terminal that started it), or give this run a "
            f"cache of its own: make demo CACHE_DIR=/path/to/other-cache (--cache-dir DIR; it starts cold). "
            f"Nothing was run.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {os.uname().nodename}, preset {preset_name}, started "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}, run folder {out}").encode(), 0)
    return fd


def _log(message: str) -> None:
    print(f"[series] {message}", file=sys.stderr, flush=True)


def _write_status(out: Path, preset: Preset, runs: list[NotebookRun], seconds: float) -> None:
    write_json_atomic(out / STATUS_FILE, {"preset": preset.name, "preset_file": str(preset.source),
                                          "seconds": round(seconds, 1),
                                          "notebooks": [asdict(r) for r in runs]}, indent=2, sort_keys=False)


def run_status(out: Path) -> list[NotebookRun]:
    """The notebooks of the run folder ``out`` as ``series.json`` records them."""
    data = json.loads((Path(out) / STATUS_FILE).read_text())
    return [NotebookRun(**r) for r in data["notebooks"]]


def run_failed(out: Path) -> list[NotebookRun]:
    return [r for r in run_status(out) if r.status != "ok"]


def export_notebook(path: Path) -> Path:
    """``path`` as standalone HTML beside it, and its inline PNG outputs under
    ``figures/<notebook>/`` (the figures a notebook shows without saving them)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    target = write_text_atomic(path.with_suffix(".html"), html)
    fig_dir = path.parent / "figures" / path.stem
    for c, cell in enumerate(nb.cells, 1):
        for k, output in enumerate(cell.get("outputs", []), 1):
            png = output.get("data", {}).get("image/png") if isinstance(output, dict) else None
            if png:
                fig_dir.mkdir(parents=True, exist_ok=True)
                data = base64.b64decode(png if isinstance(png, str) else "".join(png))
                atomic_write(fig_dir / f"cell{c:02d}_{k}.png", lambda tmp, d=data: Path(tmp).write_bytes(d))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sandbox",
                        help=f"a preset in notebooks/params ({', '.join(preset_names())}) or a .yaml file")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<timestamp>-<preset>)")
    parser.add_argument("--only", nargs="+", help="notebook numbers to run: 02,04 or 02 04")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature caches (default: the shared cache)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of NN_*.ipynb (default notebooks/)")
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        out = run_series(args.preset, args.out, args.only, cache_dir=args.cache_dir, notebooks_dir=args.notebooks)
    except PresetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SeriesBusyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    bad = run_failed(out)
    minutes = (time.time() - t0) / 60
    if bad:
        for r in bad:
            where = f" at cell {r.cell}" if r.cell else ""
            print(f"{r.name}: {r.status}{where}: {r.error}", file=sys.stderr)
        print(f"\n{len(bad)} notebook(s) did not complete ({minutes:.1f} min). Report: {out / 'index.html'}")
        return 1
    print(f"\nDone in {minutes:.1f} min. Open {out / 'index.html'} (executed notebooks and results in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
