"""benchmarks/scale.py: every stage at ImageNet's shapes with N scaled down (issue 24).

Each check runs the benchmark in a fresh interpreter (its peak RSS is the process's, so it must
not inherit what other tests loaded): every stage at scale 0.01 within the memory bound (about
80 s), and the bound failing a stage that holds a dense N x d_sae matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"

# The metrics stage, but holding the (N, d_sae) pre-activations whole, as a regression would.
DENSE = f"""
import runpy, sys
import clipattr_utils as ca
real = ca.sae.evaluate
def dense_evaluate(sae, features, **kw):
    held = (features.read() @ sae.W_enc.detach()).numpy()
    out = real(sae, features, **kw)
    return out if held.shape == (features.n, sae.d_sae) else None
ca.sae.evaluate = dense_evaluate
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def _run(tmp_path: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS is measured through Linux's /proc/self/clear_refs")
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd + ["--scale", "0.01", "--out", str(tmp_path), "--max-rss-gb", "16"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_the_memory_bound_fails_a_stage_that_holds_a_dense_n_by_d_sae_matrix(tmp_path):
    ok = _run(tmp_path, "--stages", "generate", "train", "metrics", "--keep")
    assert ok.returncode == 0, ok.stderr[-2000:]
    frame = pd.read_csv(tmp_path / "stages.csv")
    assert list(frame["stage"]) == ["generate", "train", "metrics"] and (frame["peak_anon_gb"] > 0).all()
    # --profile: the training stage is mostly matrix products (encoder and decoder, forward and back)
    prof = _run(tmp_path, "--stages", "train", "--profile", "--keep")
    assert prof.returncode == 0, prof.stderr[-2000:]
    share = float(pd.read_csv(tmp_path / "stages.csv")["gemm_share"].iloc[0])
    assert 0.05 < share <= 1.0, share
    assert "time in GEMMs" in prof.stdout
    dense = _run(tmp_path, "--stages", "metrics", code=DENSE)
    assert dense.returncode != 0 and "stage metrics: peak RSS" in dense.stderr + dense.stdout, dense.stderr[-2000:]


@pytest.mark.slow
def test_every_stage_runs_at_scale_001_within_the_memory_bound(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("scale_benchmark", SCRIPT)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    frame = pd.read_csv(tmp_path / "stages.csv")
    assert list(frame["stage"]) == list(mod.STAGES)
    assert (tmp_path / "run" / "atlas" / "index.html").is_file()
