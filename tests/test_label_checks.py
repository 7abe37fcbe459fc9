"""Issue 26, items 1 and 5: bad labels and bad inputs get one clear error everywhere.

1. Class labels outside ``[0, num_classes)`` (and not the ignore index) raise
   ``d2v_common.models.losses.label_range_message`` in PyTorch and in Keras on TensorFlow: eager,
   graph (``run_eagerly=False``) and XLA (``jit_compile=True``), where a gather past the classes
   used to clamp the label silently. (``tests/test_keras_backends.py`` runs the jax.jit and
   PyTorch-backend half with this file's helpers; this file runs in the TensorFlow process.)
   Valid labels and ignore indices give the loss they gave before.
5. Every registered class of data2vec 1.0 and 2.0, in both frameworks, refuses an empty batch
   with the same message (``d2v_common.models.input_types.check_main_input``), and every PyTorch class
   names a float64 input's dtype.
"""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import torch_inputs
from d2v_common.models.losses import label_range_message
from d2v_common.spec import weight_spec
from d2v_tf.layers import cross_entropy as keras_cross_entropy

CASES = {c.name: c for c in all_cases("small")}
# One case per head whose labels are class ids (data2vec 1.0 and 2.0); QA positions are not
# class labels (out-of-range positions are ignored, as in HF: see the QA test below).
CLASS_LABEL_CASES = [
    "text-seqcls-relk", "text-tokcls-relk", "text-mc-abs", "text-mlm-abs", "text-causal-dec",
    "audio-seq-plain", "audio-xvector-plain", "vision-cls-plain", "vision-seg-plain",
    "data2vec2-text-cls-learned", "data2vec2-audio-seq-alibi", "data2vec2-vision-cls-plain",
]
KERAS_MODES = {"eager": {"run_eagerly": True}, "graph": {"jit_compile": False}, "xla": {"jit_compile": True}}


def labelled_inputs(name: str):
    x = CASES[name].make_inputs(np.random.default_rng(0))
    return x, x.pop("labels")


def _classes(name: str, x: dict):
    """(number of classes, ignore index) of the case's labels."""
    config = CASES[name].config
    arch = CASES[name].architecture
    if arch.endswith("MultipleChoice"):
        return x["input_ids"].shape[1], -100
    if arch.endswith(("MaskedLM", "CausalLM")):
        return config.vocab_size, -100
    if arch.endswith("SemanticSegmentation"):
        return config.num_labels, config.semantic_loss_ignore_index
    if arch.endswith("XVector"):
        return config.num_labels, None
    return config.num_labels, -100


def out_of_range_labels(name: str, labels: np.ndarray, x: dict) -> tuple[np.ndarray, str]:
    """The labels with their first entry one past the classes, and the message that names it.
    (A causal LM shifts its labels: the offending id goes to position 1, the first predicted.)"""
    n, ignore = _classes(name, x)
    bad = labels.copy()
    bad.reshape(-1)[1 if CASES[name].architecture.endswith("CausalLM") else 0] = n
    return bad, label_range_message("labels", n, ignore, [n])


def _torch_model(name: str):
    case = CASES[name]
    model = d2v_torch.MODEL_CLASSES[case.architecture](case.config).eval()
    model.load_arrays(weight_spec(case.config, case.architecture).random_arrays(0))
    return model


def _keras_model(name: str):
    case = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = d2v_tf.MODEL_CLASSES[case.architecture](case.config)
    model.load_arrays(weight_spec(case.config, case.architecture).random_arrays(0))
    return model


# ------------------------------------------------------------------------ 1. label ranges


@pytest.mark.parametrize("name", CLASS_LABEL_CASES)
def test_torch_out_of_range_labels_raise_the_shared_message(name):
    x, labels = labelled_inputs(name)
    bad, message = out_of_range_labels(name, labels, x)
    model = _torch_model(name)
    with torch.no_grad():
        assert torch.isfinite(model(**torch_inputs(x), labels=torch.from_numpy(labels)).loss)
        with pytest.raises(ValueError) as error:
            model(**torch_inputs(x), labels=torch.from_numpy(bad))
    assert str(error.value) == message


# Every head eagerly; in a TF graph and under XLA one head per family and loss (the checks are
# shared per loss; each compiled mode traces the head's evaluate and fit steps).
COMPILED_LABEL_CASES = ["text-seqcls-relk", "vision-cls-plain", "data2vec2-audio-seq-alibi"]
KERAS_LABEL_RUNS = ([(name, "eager") for name in CLASS_LABEL_CASES]
                    + [(name, mode) for name in COMPILED_LABEL_CASES for mode in ("graph", "xla")]
                    + [("vision-seg-plain", "graph")])


@pytest.mark.parametrize("name, mode", KERAS_LABEL_RUNS)
def test_keras_out_of_range_labels_raise_the_shared_message_in_every_mode(name, mode):
    """evaluate (and fit, for one head per family) with one label past the classes: the same
    ValueError as PyTorch, also inside a TF graph and an XLA-compiled step."""
    x, labels = labelled_inputs(name)
    bad, message = out_of_range_labels(name, labels, x)
    model = _keras_model(name)
    model.compile(optimizer=keras.optimizers.SGD(0.0), **KERAS_MODES[mode])
    good_loss = model.evaluate(x, labels, batch_size=len(labels), verbose=0)
    assert np.isfinite(good_loss)
    with pytest.raises(ValueError) as error:
        model.evaluate(x, bad, batch_size=len(labels), verbose=0)
    assert str(error.value) == message
    if name in ("text-seqcls-relk", "vision-seg-plain", "data2vec2-audio-seq-alibi"):
        with pytest.raises(ValueError) as error:
            model.fit(x, bad, batch_size=len(labels), epochs=1, verbose=0)
        assert str(error.value) == message
    # nothing stale is left behind: valid labels run again (the same loss: lr 0, and only
    # segmentation's BatchNorm statistics move in fit)
    again = model.evaluate(x, labels, batch_size=len(labels), verbose=0)
    assert again == good_loss or (name == "vision-seg-plain" and np.isfinite(again))


@pytest.mark.parametrize("name", ["audio-ctc-plain", "data2vec2-audio-ctc-alibi"])
def test_keras_ctc_labels_past_the_vocabulary_fail_under_xla(name):
    """The CTC check used a graph assert, which XLA drops (and the 2.0 head had none in a graph):
    now both heads raise the eager call's message from the XLA-compiled step."""
    x, labels = labelled_inputs(name)
    vocab = CASES[name].config.vocab_size
    bad = labels.copy()
    bad[0, 0] = vocab + 3
    model = _keras_model(name)
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=True)
    assert np.isfinite(model.evaluate(x, labels, batch_size=len(labels), verbose=0))
    with pytest.raises(ValueError) as error:
        model.evaluate(x, bad, batch_size=len(labels), verbose=0)
    assert str(error.value) == f"Label values must be < vocab_size ({vocab}), got {vocab + 3}"


def test_keras_make_fast_reports_out_of_range_labels_under_xla():
    x, labels = labelled_inputs("text-seqcls-relk")
    bad, message = out_of_range_labels("text-seqcls-relk", labels, x)
    fast = _keras_model("text-seqcls-relk").make_fast(jit_compile=True)
    assert np.isfinite(float(fast(x, labels=labels).loss))
    with pytest.raises(ValueError, match=re.escape(message)):
        fast(x, labels=bad)


def test_keras_loss_in_a_users_tf_function_still_fails_in_the_graph():
    """Outside the steps d2v runs, a graph check fails inside the graph (as the CTC check did)."""
    import tensorflow as tf

    x, labels = labelled_inputs("text-seqcls-relk")
    bad, _ = out_of_range_labels("text-seqcls-relk", labels, x)
    model = _keras_model("text-seqcls-relk")
    step = tf.function(lambda ids, mask, y: model(input_ids=ids, attention_mask=mask, labels=y).loss)
    assert np.isfinite(step(x["input_ids"], x["attention_mask"], labels).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 3\) or -100 to ignore"):
        step(x["input_ids"], x["attention_mask"], bad)


@pytest.mark.parametrize("mode", KERAS_MODES)
def test_ignore_indices_stay_allowed(mode):
    """-100 (and segmentation's semantic_loss_ignore_index, 255) are not class ids but valid."""
    for name in ("text-tokcls-relk", "vision-seg-plain"):
        x, labels = labelled_inputs(name)
        ignore = _classes(name, x)[1]
        labels = labels.copy()
        labels.reshape(-1)[:3] = ignore
        model = _keras_model(name)
        model.compile(optimizer="sgd", **KERAS_MODES[mode])
        assert np.isfinite(model.evaluate(x, labels, batch_size=len(labels), verbose=0))
        with torch.no_grad():
            assert torch.isfinite(_torch_model(name)(**torch_inputs(x), labels=torch.from_numpy(labels)).loss)


def test_valid_label_losses_are_unchanged_bit_exact():
    """The check does not touch valid labels: the loss is bit-for-bit the unchecked formula."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    labels = np.array([0, 3, -100, 1, 2, 3])
    # torch: F.cross_entropy itself
    with torch.no_grad():
        torch_model_loss = d2v_torch.layers.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    assert torch.equal(torch_model_loss, F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))

    def unchecked(logits, labels):  # the Keras formula before the range check
        logits = keras.ops.cast(logits, "float32")
        labels = keras.ops.cast(labels, "int32")
        valid = keras.ops.not_equal(labels, -100)
        safe = keras.ops.where(valid, labels, keras.ops.zeros_like(labels))
        picked = keras.ops.take_along_axis(keras.ops.log_softmax(logits, -1), keras.ops.expand_dims(safe, -1), -1)
        validf = keras.ops.cast(valid, "float32")
        return -keras.ops.sum(picked[..., 0] * validf) / keras.ops.sum(validf)

    import tensorflow as tf

    for jit in (None, False, True):
        if jit is None:
            new, old = keras_cross_entropy(logits, labels), unchecked(logits, labels)
        else:
            new = tf.function(keras_cross_entropy, jit_compile=jit)(logits, labels)
            old = tf.function(unchecked, jit_compile=jit)(logits, labels)
        assert np.asarray(new).tobytes() == np.asarray(old).tobytes(), jit


def test_qa_positions_outside_the_input_are_ignored_as_in_hf():
    """QA positions are not class labels: HF clamps them to the ignored index (the sequence
    length), so a position past the input adds nothing to the loss, in both frameworks."""
    name = "text-qa-relkq"
    x = CASES[name].make_inputs(np.random.default_rng(0))
    length = x["input_ids"].shape[1]
    start, end = x.pop("start_positions"), x.pop("end_positions")
    far, at = start.copy(), start.copy()
    far[0], at[0] = length + 7, length
    torch_model, keras_model = _torch_model(name), _keras_model(name)
    with torch.no_grad():
        t_far, t_at = (float(torch_model(**torch_inputs(x), start_positions=torch.from_numpy(s),
                                         end_positions=torch.from_numpy(end)).loss) for s in (far, at))
    k_far, k_at = (float(keras_model(**x, start_positions=s, end_positions=end).loss) for s in (far, at))
    assert t_far == t_at and k_far == k_at and np.isfinite(t_far)


# ------------------------------------------------------------------------ 5. input checks


def _one_case_per_class():
    seen = {}
    for case in CASES.values():
        seen.setdefault(case.architecture, case)
    return seen


def test_every_registered_class_has_a_case():
    assert set(_one_case_per_class()) == set(d2v_torch.MODEL_CLASSES)
    assert set(d2v_tf.MODEL_CLASSES) == set(d2v_torch.MODEL_CLASSES)


def _empty(case):
    x = case.make_inputs(np.random.default_rng(0))
    x = {k: v[:0] for k, v in x.items() if k not in ("labels", "start_positions", "end_positions")}
    return x


@pytest.mark.parametrize("architecture", sorted(d2v_torch.MODEL_CLASSES))
def test_every_class_refuses_an_empty_batch_with_one_message(architecture):
    case = _one_case_per_class()[architecture]
    x = _empty(case)
    torch_model = _torch_model(case.name)
    name = torch_model.main_input_name
    message = rf"{name} is an empty batch \(shape \(0, [^)]*\)\): give at least one example"
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        torch_model(**torch_inputs(x))
    with pytest.raises(ValueError, match=message):
        _keras_model(case.name)(**x)


@pytest.mark.parametrize("architecture", sorted(d2v_torch.MODEL_CLASSES))
def test_every_torch_class_names_a_wrong_input_dtype(architecture):
    """float64 waveforms / pixels name the model's dtype; float ids name the integer dtypes."""
    case = _one_case_per_class()[architecture]
    x = case.make_inputs(np.random.default_rng(0))
    x = {k: v for k, v in x.items() if k not in ("labels", "start_positions", "end_positions")}
    model = _torch_model(case.name)
    name = model.main_input_name
    inputs = torch_inputs(x)
    if name == "input_ids":
        inputs[name] = inputs[name].double()
        match = r"^input_ids must be an integer tensor \(int64 or int32 indices\), got float64"
    else:
        inputs[name] = inputs[name].double()
        match = rf"^{name} is float64 but the model computes in float32; convert it first"
    with torch.no_grad(), pytest.raises(TypeError, match=match):
        model(**inputs)
