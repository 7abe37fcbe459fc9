"""The fixtures the suite reads are in the repository, intact, small and not hidden from git."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from tests.fixture_paths import DATA2VEC2_DIR, DATA2VEC2_PRETRAINING_DIR, FAIRSEQ_DICTS_DIR, FIXTURES_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = [DATA2VEC2_DIR, DATA2VEC2_PRETRAINING_DIR]  # sets described file by file in their cases.json
ALL_SETS = SETS + [FAIRSEQ_DICTS_DIR]
MAX_BYTES = 15 * 2**20  # all fixtures together


def _cases(folder):
    with open(os.path.join(folder, "cases.json"), encoding="utf-8") as f:
        return json.load(f)["cases"]


def _files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def test_fixtures_live_in_the_repository():
    assert os.path.commonpath([REPO, FIXTURES_DIR]) == REPO
    assert os.path.isfile(os.path.join(FIXTURES_DIR, "README.md"))
    for folder in SETS:
        assert os.path.isfile(os.path.join(folder, "cases.json")), folder


def test_fixtures_are_small():
    size = sum(os.path.getsize(os.path.join(FIXTURES_DIR, f)) for f in _files(FIXTURES_DIR))
    assert 0 < size <= MAX_BYTES, f"tests/fixtures holds {size} bytes"


def test_every_fixture_set_is_described_in_the_readme():
    readme = open(os.path.join(FIXTURES_DIR, "README.md"), encoding="utf-8").read()
    folders = sorted(e.name for e in os.scandir(FIXTURES_DIR) if e.is_dir() and e.name != "__pycache__")
    assert folders == sorted(os.path.basename(s) for s in ALL_SETS)
    for name in folders:
        assert f"## `{name}/`" in readme, name


@pytest.mark.parametrize("folder", SETS, ids=os.path.basename)
def test_fixture_files_are_the_ones_cases_json_lists(folder):
    """Every case's files exist with the recorded size (and sha256 where recorded); no stray files."""
    listed = {"cases.json"}
    for case in _cases(folder):
        for name, meta in case["files"].items():
            path = os.path.join(folder, case["case"], name)
            listed.add(os.path.join(case["case"], name))
            with open(path, "rb") as f:
                data = f.read()
            expected = meta if isinstance(meta, int) else meta["bytes"]
            assert len(data) == expected, path
            if isinstance(meta, dict):
                assert hashlib.sha256(data).hexdigest() == meta["sha256"], path
    assert set(_files(folder)) == listed


def test_no_fixture_is_git_ignored():
    """A *.pt or *.npz pattern in .gitignore would leave the fixtures out of every commit and clone."""
    paths = [os.path.join(folder, f) for folder in SETS for f in _files(folder)]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == "", f"ignored by .gitignore: {result.stdout}"
