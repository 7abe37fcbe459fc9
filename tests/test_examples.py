"""The fine-tuning examples run (quick mode) and beat the majority-class baseline."""

import importlib.util
import pathlib
import re

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
    # docs/training.md quotes this run's figures (seed 0): they must be what it prints
    doc = (EXAMPLES.parent / "docs" / "training.md").read_text()
    quoted = re.search(r"With `--quick` it reaches pixel accuracy ([\d.]+)\s+and mean IoU ([\d.]+)", doc)
    assert quoted, "docs/training.md no longer quotes the --quick figures"
    assert (f"{result['pixel_accuracy']:.3f}", f"{result['mean_iou']:.3f}") == quoted.groups()


@pytest.mark.parametrize("seed", [0])
def test_torch_text_example_beats_chance(seed):
    result = _load("finetune_torch_text").main(["--quick", "--seed", str(seed)])
    assert result["accuracy"] > result["majority_baseline"] + 0.1
