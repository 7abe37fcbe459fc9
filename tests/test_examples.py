"""The fine-tuning examples run (quick mode) and beat the majority-class baseline."""

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.slow  # whole fine-tuning runs

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_segmentation_example_beats_chance():
    result = _load("finetune_keras_segmentation").main(["--quick"])
    assert result["pixel_accuracy"] > result["majority_baseline"] + 0.05


@pytest.mark.parametrize("seed", [0])
def test_torch_text_example_beats_chance(seed):
    result = _load("finetune_torch_text").main(["--quick", "--seed", str(seed)])
    assert result["accuracy"] > result["majority_baseline"] + 0.1
