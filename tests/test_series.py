"""The series runner executes notebooks in order with only the parameters each declares."""

import json

import nbformat
import pytest

from clipattr_utils import series


def _notebook(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body_src)]
    nbformat.write(nb, str(path))


def test_run_series_passes_declared_parameters(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = ("import json, pathlib\npathlib.Path(out_dir, 'sae').mkdir(parents=True, exist_ok=True)\n"
            "pathlib.Path(out_dir, 'sae', 'cfg.json').write_text('{}')\n"
            "pathlib.Path(out_dir, 'seen.json').write_text(json.dumps({k: v for k, v in globals().items() "
            "if k in ('out_dir', 'n_per_class', 'epochs', 'cache_dir', 'sae_dir')}))")
    _notebook(nbs / "00_a.ipynb", "out_dir = 'x'\nn_per_class = 99", body)
    _notebook(nbs / "01_b.ipynb", "out_dir = 'y'\nepochs = 99\ncache_dir = 'c'\nsae_dir = None", body)
    monkeypatch.setitem(series.PRESETS, "probe", {"00": {"n_per_class": 2, "epochs": 5}, "01": {"epochs": 3}})
    out = series.run_series("probe", out=tmp_path / "run", notebooks_dir=nbs, cache_dir=tmp_path / "cache")
    a = json.loads((out / "00_a" / "seen.json").read_text())
    b = json.loads((out / "01_b" / "seen.json").read_text())
    assert a == {"out_dir": str((out / "00_a").resolve()), "n_per_class": 2}  # 'epochs' not declared there
    assert b["epochs"] == 3 and b["cache_dir"] == str((tmp_path / "cache").resolve())
    assert b["sae_dir"] == str((out / "00_a" / "sae").resolve()), "a later notebook reuses the SAE an earlier one saved"
    assert (out / "00_a.ipynb").is_file() and (out / "01_b.ipynb").is_file()
    with pytest.raises(ValueError, match="Unknown preset"):
        series.run_series("nope", out=tmp_path / "r2", notebooks_dir=nbs)
