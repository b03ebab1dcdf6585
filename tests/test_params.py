"""A mistyped papermill parameter stops the notebook, naming it (not a run with the defaults)."""

from __future__ import annotations

import pytest

from clipattr_utils.params import UnknownParameterError, check_injected


def test_check_injected_names_unknown_parameters_once():
    declared = {"seed", "out_dir", "In", "_ih"}
    ns = {"seed": 1, "out_dir": None, "In": [], "_ih": [], "sed": 1}
    with pytest.raises(UnknownParameterError, match=r"02_labeling: unknown parameter\(s\) \['sed'\].*declares \['out_dir', 'seed'\]"):
        check_injected(ns, declared, "02_labeling")
    ok = {"seed": 1, "out_dir": None, "In": [], "_ih": [], "_private": 3}
    check_injected(ok, declared, "02_labeling")
    # Checked once: re-running the cell later, with the notebook's own names defined, does not stop.
    ok["pd"] = object()
    check_injected(ok, declared, "02_labeling")


@pytest.mark.slow
def test_papermill_with_a_mistyped_parameter_stops_naming_it(tmp_path):
    from _notebooks import SANDBOX_WEIGHTS, require_weights, run_notebook

    require_weights(SANDBOX_WEIGHTS)
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter.*'sed'"):
        run_notebook("03_faithfulness", tmp_path, sed=1, out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "nothing ran after the check"


def test_every_notebook_declares_and_checks():
    import nbformat

    from _notebooks import ROOT
    from clipattr_utils.series import notebook_parameters

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        assert nb.cells[0].source.rstrip().splitlines()[-1].startswith("_declared = set(globals())"), path.name
        first_code = next(c for c in nb.cells[1:] if c.cell_type == "code")
        assert f'_check_injected(globals(), _declared, "{path.stem}")' in first_code.source, path.name
        assert "_declared" not in notebook_parameters(path), "bookkeeping is not a parameter"
