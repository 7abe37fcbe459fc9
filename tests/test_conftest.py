"""The suite's own guard: without the test extra, pytest stops at once with one message."""

import os
import subprocess
import sys
import textwrap

from tests import conftest


def test_missing_requirements_are_named():
    assert conftest.missing_test_requirements() == []  # this environment has everything
    absent = {"transformers", "hypothesis"}
    missing = conftest.missing_test_requirements(lambda name: None if name in absent else object())
    assert missing == ["transformers", "hypothesis"]


def test_pytest_without_the_test_extra_stops_with_one_message(tmp_path):
    # A sitecustomize that hides transformers, as on a machine without the test extra.
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.util, sys
        _find = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "transformers" else _find(name, *a)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_configs.py"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert "the test suite needs transformers (the test extra): pip install" in run.stderr + run.stdout
    assert "passed" not in run.stdout


def test_loadfile_keeps_files_whole_but_spreads_the_any_backend_files():
    # the README's `pytest -n 2 --dist loadfile`: a file's module fixtures are made once, on one worker
    assert conftest.scheduling_unit("tests/test_export_torch.py::test_onnx[Data2VecTextModel]") == (
        "tests/test_export_torch.py")
    for name in conftest.SPREAD_FILES:
        nodeid = f"tests/{name}::test_x[a]"
        assert conftest.scheduling_unit(nodeid) == nodeid
    assert "test_keras_backends.py" in conftest.SPREAD_FILES
