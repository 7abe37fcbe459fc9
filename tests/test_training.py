"""Training in both frameworks (issue 8): step parity, Keras fit/evaluate/predict with
tf.data and XLA, .keras files, mixed precision, gradient checkpointing, torch.compile."""


import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import run_torch, torch_inputs
from crosscheck.training import deterministic_config, step_parity
from d2v_common.spec import weight_spec

pytestmark = pytest.mark.slow  # every head trained a step in both frameworks


def _one_case_per_head():
    seen, out = set(), []
    for case in all_cases("small"):
        if case.architecture.endswith("Model") or "interp" in case.name or case.architecture in seen:
            continue
        seen.add(case.architecture)
        out.append(case)
    return out


HEAD_CASES = _one_case_per_head()
LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _close_to_fp32(low, reference) -> bool:
    """Within 3e-2 of float32, relative to the output's scale when it exceeds 1 (bf16 keeps
    8 significant bits: LM logits of size ~10 move by a few 1e-2 in HF's own autocast too). The
    rounding depends on the CPU: on a Xeon with native bf16 (AVX-512 BF16, AMX) every Keras head
    stays within 1.6e-2, at 1 and 2 threads alike; on an AVX2 EPYC one 2.0 vision head reached 2.4e-2."""
    return np.abs(low - reference).max() <= 3e-2 * max(1.0, float(np.abs(reference).max()))
ALL_CLASS_CASES = [c for c in all_cases("small") if "interp" not in c.name]
ONE_PER_CLASS = list({c.architecture: c for c in reversed(ALL_CLASS_CASES)}.values())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: c.name)
def test_one_step_same_weights(case, optimizer):
    worst, where, (loss_pt, loss_tf) = step_parity(case, optimizer)
    # summed losses (CTC "sum") reach the hundreds, where float32's spacing exceeds 1e-5
    assert abs(loss_pt - loss_tf) <= 1e-5 * max(1.0, abs(loss_pt))
    assert worst <= 1e-5, f"{where}: {worst:.2e}"


def _model_pair(case, seed=0):
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(seed)
    tfm = getattr(d2v_tf, "TF" + case.architecture)(config)
    tfm.load_arrays(arrays)
    return config, arrays, tfm


@pytest.mark.parametrize("case", ONE_PER_CLASS, ids=lambda c: c.architecture)
def test_keras_file_round_trip_bit_identical(case, tmp_path):
    _, _, model = _model_pair(case)
    inputs = case.make_inputs(np.random.default_rng(1))
    inputs.pop("labels", None)
    before = model(**inputs, **case.call_kwargs)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    after = loaded(**inputs, **case.call_kwargs)
    assert set(before.keys()) == set(after.keys())
    for key in before.keys():
        a, b = before[key], after[key]
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert np.array_equal(np.asarray(x), np.asarray(y)), key
    assert loaded.config == model.config


# fit / evaluate / predict through tf.data, one head per input and label form (every head's training
# step is checked above): labels per sequence, start/end positions as a dict, choices (3-D input),
# padded CTC labels, data2vec 2.0. Each traces three Keras functions: seconds to a minute a head.
TF_DATA_CASES = [c for c in HEAD_CASES if c.name in (
    "text-mc-abs", "text-qa-relkq", "audio-ctc-adapter", "data2vec2-text-cls-learned")]
assert len(TF_DATA_CASES) == 4, [c.name for c in TF_DATA_CASES]


@pytest.mark.parametrize("case", TF_DATA_CASES, ids=lambda c: c.name)
def test_keras_fit_evaluate_predict_with_tf_data(case):
    keras.utils.set_random_seed(0)
    _, _, model = _model_pair(case)
    rng = np.random.default_rng(2)
    batches = [case.make_inputs(rng) for _ in range(3)]
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    targets = {k: merged.pop(k) for k in LABEL_KEYS if k in merged}
    x = merged
    y = targets["labels"] if list(targets) == ["labels"] else targets  # QA: start/end positions
    n = next(iter(x.values())).shape[0]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    hist = model.fit(ds, epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert np.isfinite(model.evaluate(ds, verbose=0))
    preds = model.predict(x, batch_size=2, verbose=0)
    assert all(v.shape[0] == n for v in preds.values())
    # labels inside x
    ds_x = tf.data.Dataset.from_tensor_slices({**x, **targets}).batch(2)
    assert np.isfinite(model.fit(ds_x, epochs=1, verbose=0).history["loss"][0])


def test_keras_fit_xla_and_metrics():
    case = next(c for c in HEAD_CASES if c.architecture == "Data2VecVisionForImageClassification")
    keras.utils.set_random_seed(0)
    _, _, model = _model_pair(case)
    rng = np.random.default_rng(0)
    batches = [case.make_inputs(rng) for _ in range(4)]
    x = np.concatenate([b["pixel_values"] for b in batches])
    y = np.concatenate([b["labels"] for b in batches])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"], jit_compile=True)
    hist = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert set(hist.history) == {"loss", "accuracy"} and np.isfinite(hist.history["loss"]).all()
    # a loss given to compile replaces the built-in one
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    logits = np.asarray(model(x).logits)
    expected = np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y])
    assert abs(loss - expected) <= 1e-5


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: c.name)
def test_keras_mixed_precision(case, policy):
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(0)
    inputs = case.make_inputs(np.random.default_rng(1))
    reference = run_torch(case, arrays, inputs)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = getattr(d2v_tf, "TF" + case.architecture)(config)
        model.load_arrays(arrays)
        out = model(**inputs, **case.call_kwargs)  # inference first: training updates BatchNorm
        with tf.GradientTape() as tape:
            train_out = model(**inputs, **case.call_kwargs, training=True)
        grads = tape.gradient(train_out.loss, model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert train_out.loss.dtype == tf.float32 and out.loss.dtype == tf.float32
    assert all(g is None or np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    key = "logits" if "logits" in reference else "start_logits"
    assert _close_to_fp32(np.asarray(out[key], np.float32), reference[key])


@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: c.name)
def test_torch_autocast_bf16(case):
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(0)
    inputs = case.make_inputs(np.random.default_rng(1))
    reference = run_torch(case, arrays, inputs)
    model = getattr(d2v_torch, case.architecture)(config)
    model.load_arrays(arrays)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**torch_inputs(inputs), **case.call_kwargs)
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    key = "logits" if "logits" in reference else "start_logits"
    assert _close_to_fp32(out[key].detach().float().numpy(), reference[key])


@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: c.name)
def test_torch_gradient_checkpointing_same_gradients(case):
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(0)
    inputs = torch_inputs(case.make_inputs(np.random.default_rng(1)))
    grads = []
    for checkpointing in (False, True):
        model = getattr(d2v_torch, case.architecture)(config)
        model.load_arrays(arrays)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**inputs, **case.call_kwargs).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_train_eval_modes_and_torch_compile():
    case = next(c for c in HEAD_CASES if c.architecture == "Data2VecVisionForImageClassification")
    config = case.config.copy(hidden_dropout_prob=0.3)
    model = d2v_torch.Data2VecVisionForImageClassification(config)
    inputs = torch_inputs(case.make_inputs(np.random.default_rng(0)))
    inputs.pop("labels")
    model.train()
    assert not torch.equal(model(**inputs).logits, model(**inputs).logits)
    model.eval()
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model)(**inputs).logits
    assert torch.allclose(eager, compiled, atol=1e-5)
