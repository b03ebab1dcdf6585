"""Run the numbered notebook series headlessly with papermill: ``python -m clipattr_utils.series``.

Each run goes to ``runs/<timestamp>/`` with the executed notebooks and whatever they write.
Parameters come from a preset; a notebook only receives the parameters its `parameters` cell
declares, so presets can carry settings for several notebooks at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .storage import resolve_cache_dir

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

# Shared settings first; per-notebook overrides under the notebook's number.
PRESETS: dict[str, dict] = {
    # The built-in default: the notebooks' own defaults (the sandbox world).
    "sandbox": {},
    # Tiny sizes for CI smoke runs.
    "sandbox-fast": {
        "00": {"n_zero_shot": 120, "n_per_group": 40, "n_per_word": 6, "n_lesion_train": 300, "n_lesion_test": 50},
        "01": {"n_train": 1500, "n_val": 500, "epochs": 5, "compare_without_auxk": False},
        "02": {"n_pool": 1500, "n_calibration": 500, "n_top": 50},
        "03": {"n_per_class": 8, "n_train": 1500, "sae_epochs": 5, "n_random_ref": 100},
        "04": {"n_pool": 1500, "n_probe": 600, "n_train": 800, "sae_d_sae": 512, "sae_k": 16, "sae_epochs": 3,
               "min_count": 5},
        "05": {"n_pool": 400, "n_sae_train": 600, "sae_epochs": 5, "n_seeds": 3},
    },
}


def notebook_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)).keys())


def run_series(preset: str = "sandbox", out: Path | None = None, only: list[str] | None = None,
               cache_dir: Path | None = None, notebooks_dir: Path = NOTEBOOKS) -> Path:
    """Execute ``notebooks_dir/NN_*.ipynb`` in order into ``out``; returns the run folder."""
    import papermill

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out) if out else REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = resolve_cache_dir(cache_dir)
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [p for p in notebooks if p.name[:2] in only]
    if not notebooks:
        raise FileNotFoundError(f"No notebooks NN_*.ipynb found in {notebooks_dir}")
    settings = PRESETS[preset]
    produced: dict[str, str] = {}  # outputs of earlier notebooks that later ones reuse
    for path in notebooks:
        declared = notebook_parameters(path)
        shared = {**produced, "cache_dir": str(cache_dir.resolve()), "out_dir": str((out / path.stem).resolve())}
        params = {k: v for k, v in {**shared, **settings.get(path.name[:2], {})}.items() if k in declared}
        print(f"[series] {path.name} {params}", flush=True)
        # Batch runs render the widgets as static tables and figures (clipattr_utils.widgets).
        os.environ.setdefault("CLIPATTR_STATIC", "1")
        papermill.execute_notebook(str(path), str(out / path.name), parameters=params, kernel_name="python3",
                                   cwd=str(notebooks_dir), progress_bar=False)
        # The SAE trained by 01 is the one the later notebooks explain (no second training).
        sae_dir = out / path.stem / "sae"
        if (sae_dir / "cfg.json").is_file():
            produced["sae_dir"] = str(sae_dir.resolve())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sandbox", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<timestamp>)")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 00 01")
    args = parser.parse_args(argv)
    out = run_series(args.preset, args.out, args.only)
    print(f"\nDone. Executed notebooks and results are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
