"""The small shared pieces (atomic writes, device and folder resolution) and the flat API."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import nbformat
import pytest
import torch

import clipattr_utils as ca
from clipattr_utils import storage

ROOT = Path(__file__).resolve().parents[1]


def test_write_json_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "result.json"
    storage.write_json_atomic(path, {"a": 1, "arr": torch.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1, "arr": [0, 1, 2]}
    with pytest.raises(TypeError, match="cannot store"):
        storage.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp file left behind


def test_resolve_device():
    assert storage.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert storage.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            storage.resolve_device("cuda")


def test_default_cache_and_run_folders_do_not_depend_on_the_working_directory(tmp_path):
    code = "import clipattr_utils.storage as s; print(s.default_cache_dir()); print(s.resolve_out_dir(None, 'nb'))"
    env = {k: v for k, v in os.environ.items() if k != storage.CACHE_ENV}
    seen = [subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                           check=True).stdout for cwd in (ROOT, ROOT / "notebooks", tmp_path)]
    assert seen[0] == seen[1] == seen[2]
    cache, run = seen[0].split()
    assert Path(cache) == ROOT / ".cache" and Path(run) == ROOT / "runs" / "nb"
    env[storage.CACHE_ENV] = str(tmp_path / "elsewhere")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.split()[0]) == tmp_path / "elsewhere"


def test_one_atomic_writer_and_one_device_resolver():
    # Only storage.py renames temp files into place or resolves "auto" devices (features.py
    # also renames whole cache folders into place: a directory commit, not a file write).
    offenders = []
    for path in (ROOT / "clipattr_utils").rglob("*.py"):
        if path.name == "storage.py":
            continue
        text = path.read_text()
        if re.search(r"os\.replace\(|\.replace\(path\)|tmp\.replace\(", text) and "features.py" not in path.name:
            offenders.append(f"{path.relative_to(ROOT)}: renames a temp file itself")
        if re.search(r'==\s*"auto"', text) and "torch.cuda.is_available" in text:
            offenders.append(f"{path.relative_to(ROOT)}: resolves device='auto' itself")
    assert not offenders, offenders


def test_notebooks_share_parameter_names():
    import papermill

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(notebooks) >= 3
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        assert "parameters" in nb.cells[0].metadata.get("tags", []), f"{nb_path.name}: the first cell holds the parameters"
        params = papermill.inspect_notebook(str(nb_path))
        assert {"seed", "out_dir"} <= set(params), nb_path.name
        assert params["out_dir"]["default"] == "None", f"{nb_path.name}: out_dir defaults to the run folder"
        if "cache_dir" in params:
            assert params["cache_dir"]["default"] == "None", f"{nb_path.name}: cache_dir defaults to the shared cache"
        assert "model" not in params, f"{nb_path.name}: the CLIP is `model_name` in every notebook"


def test_flat_api_has_the_verbs_of_the_flow():
    for name in ("load_clip", "extract", "FeatureCache", "TopKSAE", "train_sae", "TrainConfig", "act_grad",
                 "act_grad_paper", "integrated_gradients", "logit_lens", "act_logit_lens", "energy", "random_scores",
                 "Readout", "evaluate_faithfulness", "FaithfulnessConfig", "resolve_device", "default_cache_dir",
                 "check_compatible", "save_saelens"):
        assert hasattr(ca, name), name
    assert ca.train_sae is ca.sae.train and ca.evaluate_faithfulness is ca.faithfulness.evaluate


def test_attribution_methods_take_explicit_keywords():
    common = {"code", "top_n", "on_chunk", "chunk_n", "chunk_t", "dtype", "device", "progress"}
    for name, method in ca.attribution.METHODS.items():
        params = inspect.signature(method).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{name} hides its options in **kwargs"
        assert list(params)[:4] == ["x", "sae", "head", "text"], name
        keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert common <= keywords, (name, common - keywords)
    hints = typing.get_type_hints(ca.TrainConfig)
    assert typing.get_origin(hints["loss"]) is typing.Literal
    assert set(typing.get_args(hints["loss"])) == {"normalized", "eq10", "mse", "fvu"}


def test_no_process_wording_in_user_facing_text():
    pattern = re.compile(r"\bissue \d|Done when|\bthis session\b", re.IGNORECASE)
    files = [*(ROOT / "clipattr_utils").rglob("*.py"), *(ROOT / "notebooks").glob("*.ipynb"),
             *(ROOT / "benchmarks").glob("*.py")]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in files for m in [pattern.search(p.read_text())] if m]
    assert not hits, hits


# What each notebook must declare besides the shared names (seed, device, cache_dir, out_dir).
NOTEBOOK_PARAMETERS = {
    "00_sandbox_world": ['model_name = "sandbox"', 'labeler_name = "sandbox-labeler"'],
    "01_sae_training": ['model_name = "sandbox"', 'dataset = "sandbox"'],
    "02_labeling": ['model_name = "sandbox"', 'labeler_name = "sandbox-labeler"', "sae_dir = None"],
    "03_faithfulness": ['model_name = "sandbox"', "sae_dir = None"],
    "04_failure_mining": ['model_name = "sandbox"', "sae_dir = None"],
    "05_melanoma_case": ['model_name = "sandbox-derm"', "isic_csv = None", "alpha = 0.5"],
    "06_find_the_shortcut": ["challenge_seed = 0", 'labeler_name = "sandbox-labeler"', "detective_sae_dir = None"],
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_PARAMETERS))
def test_committed_notebook_is_clean_and_starts_with_its_parameters(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", []), name
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{name}: commit without outputs"
    shared = ["seed = 0", "out_dir = None"] + ([] if name.startswith("00") else ["cache_dir = None", 'device = "auto"'])
    for text in shared + NOTEBOOK_PARAMETERS[name]:
        assert text in first.source, f"{name}: parameters cell lacks {text!r}"


def test_every_notebook_is_listed():
    names = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert names == set(NOTEBOOK_PARAMETERS)
