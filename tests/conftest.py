import importlib.util
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# What the suite needs beyond the library: both frameworks and the test extra (the HF oracle and
# the property tests). Without them every test file would fail on import; stop once instead.
REQUIRED = ("torch", "tensorflow", "transformers", "tf_keras", "hypothesis", "peft")
INSTALL = 'pip install torch==2.13.0 tensorflow==2.21.0 -e ".[all,test]"'


def missing_test_requirements(find_spec=importlib.util.find_spec) -> list[str]:
    """The modules of ``REQUIRED`` that cannot be imported here."""
    return [name for name in REQUIRED if find_spec(name) is None]


def pytest_configure(config):
    missing = missing_test_requirements()
    if missing:
        raise pytest.UsageError(f"the test suite needs {', '.join(missing)} (the test extra): {INSTALL}")


import numpy as np  # noqa: E402

# Keras picks its backend once per process. The TensorFlow process runs every test file but
# test_keras_backends.py; a process with another backend (KERAS_BACKEND=jax or torch, the README's
# second and third pytest commands) runs only the files written for any backend.
_HERE = os.path.dirname(os.path.abspath(__file__))
_BACKENDS_FILE = "test_keras_backends.py"
_ANY_BACKEND_FILES = (_BACKENDS_FILE, "test_keras_adapters.py")
if os.environ["KERAS_BACKEND"] == "tensorflow":
    collect_ignore = [_BACKENDS_FILE]
else:
    collect_ignore = sorted(f for f in os.listdir(_HERE) if f.startswith("test_") and f.endswith(".py")
                            and f not in _ANY_BACKEND_FILES)

# `pytest -n 2 --dist loadfile` (the README's command) keeps each file's tests on one worker, so a
# module fixture (an export of every class, a built model) is made once. The files below share
# nothing between tests: theirs spread over both workers, test by test. In a Keras process on JAX
# or PyTorch they are the only two files, and one of them is most of the run.
SPREAD_FILES = frozenset(_ANY_BACKEND_FILES)


def scheduling_unit(nodeid: str) -> str:
    """What xdist keeps on one worker under ``--dist loadfile``: the test's file, or the test itself
    in ``SPREAD_FILES``."""
    path = nodeid.split("::", 1)[0]
    return nodeid if os.path.basename(path) in SPREAD_FILES else path


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler for any other --dist
    from xdist.scheduler import LoadFileScheduling

    class FilesWholeButSpread(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:  # xdist's hook for a scheduler's unit of work
            return scheduling_unit(nodeid)

    return FilesWholeButSpread(config, log)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
