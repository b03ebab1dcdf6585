"""pyproject.toml and environment.yml declare the same packages; the repo keeps its promises."""

import json
import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch", "pillow": "pillow", "open-clip-torch": "open-clip-torch"}


def _name(spec: str) -> str:
    name = re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")
    return CONDA_NAMES.get(name, name)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda, in_dependencies = set(), False
    for line in (REPO / "environment.yml").read_text().splitlines():
        item = line.strip()
        if not line.startswith(" ") and item:
            in_dependencies = item == "dependencies:"
        elif in_dependencies and item.startswith("- ") and not item.endswith(":"):
            conda.add(_name(item[2:]))
    conda -= {"python", "pip"}
    assert declared == conda, f"only in pyproject: {declared - conda}; only in environment.yml: {conda - declared}"


def test_ci_calls_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text() and "make demo" in (REPO / "README.md").read_text()


def test_notebooks_committed_clean_with_parameters_cell():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "the notebook series is missing"
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and "parameters" in code[0].get("metadata", {}).get("tags", []), f"{path.name}: first code cell must be tagged 'parameters'"
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"


def test_no_machine_paths_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for f in files:
        p = REPO / f
        if p.suffix in (".safetensors", ".npy") or not p.is_file():
            continue
        text = p.read_text(errors="ignore")
        if re.search(r"(?<![\w.])/(work|root|home)/[A-Za-z]", text) and f != "tests/test_packaging.py":
            offenders.append(f)
    assert not offenders, offenders
