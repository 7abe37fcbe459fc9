"""The package as users get it: a wheel built from the sources, installed outside the source tree,
runs ``python -m crosscheck``; it ships its LICENSE and no test data."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("d2v_common", "d2v_torch", "d2v_tf", "crosscheck")
CHEAP_CASE = "vision-model-shared-cls"
# What a source checkout holds besides the sources: the tests (and their fixtures), build outputs.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "tests", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", ".whl")


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode()), zf.namelist()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (offline, no build isolation) from a copy of the sources without tests/."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(root / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600, cwd=root)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = (root / "dist").glob("d2v-*.whl")
    return path


def test_license_file_is_the_license_pyproject_declares():
    pyproject = open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8").read().splitlines()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    text = open(os.path.join(REPO, "LICENSE"), encoding="utf-8").read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8").read().startswith("# Changelog")


@pytest.mark.slow
def test_wheel_ships_the_packages_and_license_but_no_tests(wheel):
    metadata, names = _metadata(wheel)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {n.split("/")[0] for n in names if not n.startswith("d2v-")} == set(PACKAGES)
    assert not [n for n in names if n.startswith("tests/") or "/fixtures/" in n or n.endswith((".pt", ".npz"))]


@pytest.mark.slow
def test_installed_wheel_runs_crosscheck_outside_the_source_tree(wheel, tmp_path):
    site, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update(PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
    where = subprocess.run([sys.executable, "-c", f"import {', '.join(PACKAGES)}; "
                            f"print('\\n'.join(m.__file__ for m in ({', '.join(PACKAGES)})))"],
                           capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert where.returncode == 0, where.stderr[-3000:]
    for module_file in where.stdout.split():
        assert os.path.commonpath([str(site), module_file]) == str(site), module_file
    run = subprocess.run([sys.executable, "-m", "crosscheck", "--case", CHEAP_CASE],
                         capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed, 0 failed" in run.stdout and CHEAP_CASE in run.stdout
