"""Which SAE family reveals the planted concepts? Top-k, BatchTopK and Matryoshka on the sandbox.

    python benchmarks/sae_families.py --seeds 50 51                 # the README table
    python benchmarks/sae_families.py --seeds 50 --families topk     # one family

Each (family, seed) is one run of the series (notebooks 01-05, `notebooks/params/sandbox.yaml`
sizes, the seed for every notebook) with notebook 01's `family` and notebook 05's `sae_family`
set: the same code path a user runs. Width and k are the notebooks' defaults for every family
(01: 1536 latents, k = 32; 05: 256, k = 16); BatchTopK keeps k per sample on average (its
threshold is the batches' cut), so the mean L0 is equal too, and the table shows it. A run
already finished in ``--out`` is read, not redone.

Per run, from the files the notebooks write:
- 01 `metrics.json` (held-out): FVU, dead share, mean L0;
- 02 `ground_truth.json` / `latents.csv`: share of labelled latents >= 90 % pure in a planted
  attribute, and the share of those labelled with the pure value;
- 03 `summary.json`: deletion (local) and insertion (local) AUC of Act x Grad;
- 04 `ground_truth.json`: planted modes found (recall > 0, of four) and precision@10;
- 05 `summary.json`: the red latent's relevance rank among benign latents and its purity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from labeling_seeds import markdown  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("topk", "batchtopk", "matryoshka")


def run_one(family: str, seed: int, out: Path, cache: Path) -> Path:
    import yaml

    from clipattr_utils import series

    run = out / f"{family}-s{seed}"
    if (run / "series.json").is_file() and not series.run_failed(run):
        return run
    spec = yaml.safe_load((series.PARAMS_DIR / "sandbox.yaml").read_text())
    spec["notebooks"] = ["01", "02", "03", "04", "05"]
    spec["seed"] = seed
    spec["01"] = {**spec.get("01", {}), "family": family}
    spec["05"] = {**spec.get("05", {}), "sae_family": family}
    preset = out / f"{family}-s{seed}.yaml"
    preset.write_text(yaml.safe_dump(spec))
    series.run_series(preset, out=run, cache_dir=cache, report=False)
    failed = series.run_failed(run)
    if failed:
        raise RuntimeError(f"{run}: {failed}")
    return run


def _auc(summary: dict, experiment: str, method: str = "Act x Grad") -> float:
    rows = [r for r in summary["auc"] if r["experiment"] == experiment and r["method"] == method]
    return float(rows[0]["auc"]) if rows else float("nan")


def row(run: Path) -> dict:
    family, seed = run.name.rsplit("-s", 1)
    m01 = json.loads((run / "01_sae_training" / "metrics.json").read_text())["held-out"]
    gt02 = json.loads((run / "02_labeling" / "ground_truth.json").read_text())
    overall = next(r for r in gt02["labels"] if r["attribute"] == "overall")
    latents = pd.read_csv(run / "02_labeling" / "latents.csv")
    s03 = json.loads((run / "03_faithfulness" / "summary.json").read_text())
    gt04 = json.loads((run / "04_failure_mining" / "ground_truth.json").read_text())
    s05 = json.loads((run / "05_melanoma_case" / "summary.json").read_text())
    return {"family": family, "seed": int(seed), "fvu": m01["fvu"], "dead": m01["dead_frac"], "l0": m01["l0"],
            "pure share": overall["n_pure"] / max(len(latents), 1), "pure named": overall["share_named"],
            "deletion AUC": _auc(s03, "deletion_local"), "insertion AUC": _auc(s03, "insertion_local"),
            "modes found": int(sum(v > 0 for v in gt04["recall"].values())),
            "precision@10": gt04.get("precision_at_10", float("nan")),
            "red rank": s05.get("red_latent_rank"), "red purity": s05.get("red_latent_purity")}


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in rows.columns if c not in ("family", "seed")]
    out = []
    for fam, g in rows.groupby("family", sort=False):
        cell = {"family": fam, "seeds": ", ".join(str(s) for s in g["seed"])}
        for c in cols:
            v = pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=float)
            cell[c] = " / ".join("n/a" if np.isnan(x) else (f"{x:.0f}" if c in ("modes found", "red rank")
                                                           else f"{x:.3f}") for x in v)
        out.append(cell)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sae-families")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature caches (default: <out>/cache)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(f, s, a.out, a.cache_dir or a.out / "cache") for s in a.seeds for f in a.families]
    rows = pd.DataFrame([row(r) for r in runs])
    rows.to_csv(a.out / "families.csv", index=False)
    print(f"SAE families on the sandbox, seeds {a.seeds} (values per seed, in that order)\n")
    print(markdown(summary(rows)))


if __name__ == "__main__":
    main()
