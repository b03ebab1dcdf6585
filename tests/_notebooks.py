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
