import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Keras picks its backend once per process. The TensorFlow process runs every test file but
# test_keras_backends.py; a process with another backend (KERAS_BACKEND=jax, the README's second
# pytest command) runs only that file, whose tests are written for any backend.
_HERE = os.path.dirname(os.path.abspath(__file__))
_BACKENDS_FILE = "test_keras_backends.py"
if os.environ["KERAS_BACKEND"] == "tensorflow":
    collect_ignore = [_BACKENDS_FILE]
else:
    collect_ignore = sorted(f for f in os.listdir(_HERE) if f.startswith("test_") and f.endswith(".py")
                            and f != _BACKENDS_FILE)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
