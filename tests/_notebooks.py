"""Running a numbered notebook headless in a test: papermill, from the repository root, with
the notebook's own parameters cell overridden; skipped where the shipped weights are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_WEIGHTS = ROOT / "data" / "sandbox" / "sandbox.safetensors"
LABELER_WEIGHTS = ROOT / "data" / "sandbox" / "sandbox-labeler.safetensors"
DERM_WEIGHTS = ROOT / "data" / "sandbox" / "sandbox-derm.safetensors"


def require_weights(path: Path = SANDBOX_WEIGHTS) -> None:
    """Skip the test when the shipped model file ``path`` is not in this checkout."""
    if not path.is_file():
        pytest.skip(f"the shipped model {path.relative_to(ROOT)} is missing")


def run_notebook(stem: str, tmp_path: Path, **params) -> Path:
    """Execute ``notebooks/<stem>.ipynb`` with ``params`` into ``tmp_path``; returns the executed copy."""
    papermill = pytest.importorskip("papermill")
    executed = tmp_path / f"{stem[:2]}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(executed), parameters=params,
                               kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return executed


def object_labels_against_the_pool(labeling_dir: Path, n_used: int = 20) -> list[dict]:
    """Notebook 02's object labels checked from its files alone (an independent recomputation of
    `labeling.misnamed_objects`): vocabulary.csv says which object a label names, top_samples.csv
    which images a latent's top ``n_used`` are, the pool rebuilt from pool.json what those images
    show. One dict per latent with an object label: latent, label, alignment, object, share."""
    import json

    import numpy as np
    import pandas as pd

    from clipattr_utils.labeling.pool import rebuild_sandbox_pool

    latents = pd.read_csv(labeling_dir / "latents.csv", keep_default_na=False)
    tops = pd.read_csv(labeling_dir / "top_samples.csv")
    vocab_csv = pd.read_csv(labeling_dir / "vocabulary.csv", keep_default_na=False)
    pool = rebuild_sandbox_pool(json.loads((labeling_dir / "pool.json").read_text())["kwargs"])
    named_object = {}
    for label, attr, value in zip(vocab_csv["label"], vocab_csv["attribute"], vocab_csv["value"].astype(str)):
        parts = dict(zip(str(attr).split("+"), value.split("+")))
        if "object" in parts:
            named_object[label] = parts["object"]
        elif attr == "sprite":
            named_object[label] = value.split("_")[0]
    objects_by_id = dict(zip(pool.attributes["sample_id"], pool.attributes["object"]))
    rows = []
    for j, label, align in zip(latents["latent"], latents["label"], latents["alignment"]):
        if label not in named_object:
            continue
        ids = tops[(tops["latent"] == j) & (tops["rank"] < n_used)]["sample_id"]
        share = float(np.mean([objects_by_id[i] == named_object[label] for i in ids]))
        rows.append({"latent": int(j), "label": label, "alignment": float(align), "object": named_object[label],
                     "share": share})
    return rows
