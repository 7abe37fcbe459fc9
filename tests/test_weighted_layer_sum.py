"""The weighted layer sum (SUPERB style, ``use_weighted_layer_sum``) on the text and vision
classifiers (issue 30): off by default (HF checkpoints unchanged), ``layer_weights`` in the
spec, the same numbers in PyTorch and Keras, checkpoints that move between them."""

import numpy as np
import pytest

import d2v_tf
import d2v_torch
from crosscheck.cases import text as text_cases
from crosscheck.cases import tiny
from crosscheck.cases import vision as vision_cases
from crosscheck.cases.base import Case
from crosscheck.runner import run_tf, run_torch
from d2v_common.configs import Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import weight_spec

CASES = [
    Case("text-seqcls-weighted", "Data2VecTextForSequenceClassification",
         Data2VecTextConfig(**tiny.TEXT, use_weighted_layer_sum=True), None),
    Case("vision-cls-weighted-mean", "Data2VecVisionForImageClassification",
         Data2VecVisionConfig(**tiny.VISION, num_labels=3, use_weighted_layer_sum=True), None),
    Case("vision-cls-weighted-cls-token", "Data2VecVisionForImageClassification",
         Data2VecVisionConfig(**tiny.VISION, num_labels=3, use_weighted_layer_sum=True, use_mean_pooling=False), None),
]
for case in CASES:
    case.make_inputs = (text_cases._inputs(case.config, "seqcls") if case.family == "text"
                        else vision_cases._inputs(case.config, "cls"))


def _arrays(case, seed=0):
    arrays = weight_spec(case.config, case.architecture).random_arrays(seed)
    arrays["layer_weights"] = np.random.default_rng(seed).standard_normal(arrays["layer_weights"].shape).astype(np.float32)
    return arrays


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_and_keras_agree_and_the_weights_matter(case):
    arrays = _arrays(case)
    assert arrays["layer_weights"].shape == (case.config.num_hidden_layers + 1,)
    inputs = case.make_inputs(np.random.default_rng(1))
    pt, tf = run_torch(case, arrays, inputs), run_tf(case, arrays, inputs)
    for key in ("logits", "loss"):
        np.testing.assert_allclose(tf[key], pt[key], atol=1e-5, rtol=1e-5, err_msg=key)
    assert len(pt["hidden_states"]) == case.config.num_hidden_layers + 1  # every state is returned, as HF's audio heads do
    uniform = dict(arrays, layer_weights=np.zeros_like(arrays["layer_weights"]))
    assert np.abs(run_torch(case, uniform, inputs)["logits"] - pt["logits"]).max() > 1e-4


def test_off_by_default_and_only_on_the_classifiers():
    for config in (Data2VecTextConfig(**tiny.TEXT), Data2VecVisionConfig(**tiny.VISION)):
        assert "use_weighted_layer_sum" not in config.to_dict()  # HF's config.json stays HF's
    on = Data2VecTextConfig(**tiny.TEXT, use_weighted_layer_sum=True)
    assert "layer_weights" in weight_spec(on, "Data2VecTextForSequenceClassification").names()
    assert "layer_weights" not in weight_spec(on, "Data2VecTextForTokenClassification").names()
    assert "layer_weights" not in weight_spec(CASES[0].config.copy(use_weighted_layer_sum=False),
                                              "Data2VecTextForSequenceClassification").names()
    assert d2v_torch.Data2VecTextForTokenClassification(on).layer_weights is None
    with pytest.raises(TypeError, match="use_weighted_layer_sum must be true or false"):
        weight_spec(Data2VecTextConfig(**tiny.TEXT, use_weighted_layer_sum="yes"), "Data2VecTextForSequenceClassification")


def test_checkpoints_with_layer_weights_move_between_frameworks(tmp_path):
    case = CASES[1]
    torch_model = d2v_torch.Data2VecVisionForImageClassification(case.config)
    torch_model.load_arrays(_arrays(case))
    torch_model.save_pretrained(tmp_path)
    keras_model = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(tmp_path)
    assert keras_model.config.use_weighted_layer_sum is True
    np.testing.assert_array_equal(keras_model.state_arrays()["layer_weights"], torch_model.state_arrays()["layer_weights"])
