"""Notebook 02 over several seeds: are the labels right per attribute kind, and is the SAE basis
more diverse than neurons and PCA (Sec. 5.2)? Mean and SEM over seeds.

    python benchmarks/labeling_seeds.py --seeds 40 41 42 43 44          # held-out seeds
    python benchmarks/labeling_seeds.py --seeds 40 41 --out runs/labeling-seeds --params '{"n_pool": 3000}'

Each seed is one headless run of ``notebooks/02_labeling.ipynb`` with its defaults (the same
code path a user runs; a run already finished in ``--out`` is read, not redone). Prints two
tables, in markdown, for ``benchmarks/RESULTS.md``:

1. per attribute: latents >= 90 % pure in it, and the share of those whose label names the pure value;
2. per basis (SAE, neuron, PCA): unique labels and mean clarity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_seed(seed: int, out: Path, cache: Path, params: dict) -> Path:
    run_dir = out / f"seed{seed}"
    if (run_dir / "ground_truth.json").is_file() and (run_dir / "diversity.json").is_file():
        return run_dir
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / "02_labeling.ipynb"), str(out / f"02-seed{seed}.ipynb"),
                               parameters={**params, "seed": seed, "out_dir": str(run_dir), "cache_dir": str(cache)},
                               kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return run_dir


def _mean_sem(values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return "n/a"
    sem = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.2f} ± {sem:.2f}" if sem == sem else f"{v.mean():.2f}"


def tables(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(labels per attribute, diversity per basis, per-seed rows) over the runs."""
    label_rows, basis_rows = [], []
    for d in run_dirs:
        gt = json.loads((d / "ground_truth.json").read_text())
        for r in gt["labels"]:
            label_rows.append({"run": d.name, **r})
        for r in json.loads((d / "diversity.json").read_text())["bases"]:
            basis_rows.append({"run": d.name, **r})
        n_mis = len(gt.get("misnamed_objects", []))
        label_rows.append({"run": d.name, "attribute": "misnamed objects", "n_pure": n_mis})
    labels = pd.DataFrame(label_rows)
    bases = pd.DataFrame(basis_rows)
    lab_sum = []
    for a, g in labels[labels["attribute"] != "misnamed objects"].groupby("attribute", sort=False):
        lab_sum.append({"attribute": a, "pure latents (per seed)": _mean_sem(list(g["n_pure"])),
                        "share named": _mean_sem(list(g["share_named"])),
                        "share named, pure in it only": _mean_sem(list(g["share_named_only"])),
                        "seeds": len(g)})
    mis = labels[labels["attribute"] == "misnamed objects"]["n_pure"]
    lab_sum.append({"attribute": "object labels on latents whose top-20 mostly show another object",
                    "pure latents (per seed)": _mean_sem(list(mis)), "share named": "", "share named, pure in it only": "",
                    "seeds": len(mis)})
    bas_sum = []
    for b, g in bases.groupby("basis", sort=False):
        bas_sum.append({"basis": b, "components": int(g["components"].iloc[0]),
                        "unique labels": _mean_sem(list(g["unique_labels"])),
                        "unique labels (s_j > 0)": _mean_sem(list(g["unique_labels_positive"])),
                        "mean clarity": _mean_sem(list(g["mean_clarity"])), "seeds": len(g)})
    # Paired differences: SAE minus each other basis, seed by seed.
    wide = bases.pivot(index="run", columns="basis", values="unique_labels")
    for other in [c for c in wide.columns if c != "SAE"]:
        diff = (wide["SAE"] - wide[other]).tolist()
        bas_sum.append({"basis": f"SAE - {other} (paired)", "components": "",
                        "unique labels": _mean_sem(diff), "unique labels (s_j > 0)": "", "mean clarity": "",
                        "seeds": len(diff)})
    return pd.DataFrame(lab_sum), pd.DataFrame(bas_sum), pd.concat([labels, bases], ignore_index=True)


def markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "labeling-seeds")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature caches (default: <out>/cache)")
    p.add_argument("--params", default="{}", help="JSON of extra notebook-02 parameters")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    params = json.loads(a.params)
    runs = [run_seed(s, a.out, a.cache_dir or a.out / "cache", params) for s in a.seeds]
    labels, bases, per_seed = tables(runs)
    per_seed.to_csv(a.out / "per_seed.csv", index=False)
    print(f"notebook 02, seeds {a.seeds} (mean ± SEM over seeds)\n")
    print(markdown(labels))
    print()
    print(markdown(bases))


if __name__ == "__main__":
    main()
