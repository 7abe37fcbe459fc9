"""Vision family: oracle parity, cross-framework parity, HF file interop, training."""

import numpy as np
import pytest
import torch
import transformers

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import check_case, run_hf, run_tf, run_torch, max_abs_diff, to_numpy_outputs
from d2v_common.configs import Data2VecVisionConfig
from d2v_common.spec import weight_spec
from tests.oracle import hf_config
from crosscheck.cases import tiny

VISION_CASES = all_cases("small", ["vision"])


@pytest.mark.parametrize("case", VISION_CASES, ids=lambda c: c.name)
def test_case_matches_hf_and_across_frameworks(case):
    row = check_case(case, seed=0, reference="hf")
    assert row.error is None, row.error
    assert row.ok, row.to_dict()
    assert row.round_trip == {"pt>tf>pt": True, "pt>h5>pt": True}
    if case.hf_torch:
        assert row.reference_ok


SMALL = dict(tiny.VISION, num_labels=3)
CLASSES = ["Data2VecVisionModel", "Data2VecVisionForImageClassification", "Data2VecVisionForSemanticSegmentation"]


def _pair(arch, config, seed=0):
    arrays = weight_spec(config, arch).random_arrays(seed)
    pt = getattr(d2v_torch, arch)(config).eval()
    pt.load_arrays(arrays)
    tf = getattr(d2v_tf, "TF" + arch)(config)
    tf.load_arrays(arrays)
    return arrays, pt, tf


@pytest.mark.parametrize("arch", CLASSES)
def test_hf_tf_h5_loads_into_both_frameworks(arch, tmp_path):
    """A tf_model.h5 written by transformers' TF class gives HF's PyTorch numbers in d2v."""
    config = Data2VecVisionConfig(**SMALL, use_relative_position_bias=True)
    hf_tf = getattr(transformers, "TF" + arch)(hf_config(config))
    hf_tf(hf_tf.dummy_inputs)
    rng = np.random.default_rng(0)
    for w in hf_tf.weights:
        if "moving_variance" in w.name:
            continue  # HF's TF -> PT conversion drops BatchNorm statistics: keep them at defaults
        if "moving_mean" in w.name:
            continue
        w.assign(0.2 * rng.standard_normal(w.shape).astype(np.float32))
    hf_tf.save_pretrained(tmp_path)
    # HF's own TF -> PT name mapping gives the reference PyTorch model (from_pretrained(from_tf=True)
    # fails with torch 2.13, so its converter is called directly).
    from transformers.modeling_tf_pytorch_utils import load_tf2_model_in_pytorch_model

    hf_pt = getattr(transformers, arch)(hf_config(config))
    load_tf2_model_in_pytorch_model(hf_pt, hf_tf)
    hf_pt.eval()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = to_numpy_outputs(hf_pt(torch.from_numpy(x), output_hidden_states=True))
    pt = getattr(d2v_torch, arch).from_pretrained(tmp_path)
    assert pt.load_report.clean, str(pt.load_report)
    tf = getattr(d2v_tf, "TF" + arch).from_pretrained(tmp_path)
    with torch.no_grad():
        got_pt = to_numpy_outputs(pt(torch.from_numpy(x), output_hidden_states=True))
    got_tf = to_numpy_outputs(tf(x, output_hidden_states=True))
    tol = 1e-4 if arch.endswith("Segmentation") else 1e-5
    for got in (got_pt, got_tf):
        assert max(max_abs_diff(want, got).values()) <= tol


@pytest.mark.parametrize("arch", CLASSES)
def test_return_dict_false_matches_hf_tuple(arch):
    config = Data2VecVisionConfig(**SMALL)
    arrays, pt, tf = _pair(arch, config)
    from crosscheck.runner import hf_model

    case = [c for c in VISION_CASES if c.architecture == arch][0]
    hf = hf_model(type(case)(case.name, arch, config, case.make_inputs), arrays)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    kwargs = dict(output_attentions=True, return_dict=False)
    if arch.endswith("Classification"):
        kwargs["labels"] = np.array([0, 2])
    if arch.endswith("Segmentation"):
        kwargs["labels"] = np.random.default_rng(1).integers(0, 3, (2, 32, 32))
    tkw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with torch.no_grad():
        want = hf(torch.from_numpy(x), **tkw)
        got = pt(torch.from_numpy(x), **tkw)
    got_tf = tf(x, **kwargs)
    assert isinstance(got, tuple) and isinstance(got_tf, tuple) and len(got) == len(want) == len(got_tf)
    for a, b, c in zip(want, got, got_tf):
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        c = c if isinstance(c, tuple) else (c,)
        for u, v, w in zip(a, b, c):
            assert np.allclose(u.numpy(), v.numpy(), atol=1e-5) and np.allclose(v.numpy(), np.asarray(w), atol=1e-4)


def test_mask_token_and_head_mask_match_hf():
    config = Data2VecVisionConfig(**SMALL, use_mask_token=True, use_relative_position_bias=True)
    arrays, pt, tf = _pair("Data2VecVisionModel", config)
    from crosscheck.cases.base import Case

    case = Case("vision-model-mask", "Data2VecVisionModel", config, lambda rng: {})
    rng = np.random.default_rng(0)
    inputs = {
        "pixel_values": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
        "bool_masked_pos": rng.random((2, 16)) < 0.5,
        "head_mask": np.array([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1]], np.float32),
    }
    case.call_kwargs = dict(output_attentions=True)
    want = run_hf(case, arrays, inputs)
    got = run_torch(case, arrays, inputs, pt)
    got_tf = run_tf(case, arrays, inputs, tf)
    assert max(max_abs_diff(want, got).values()) <= 1e-5
    assert max(max_abs_diff(got, got_tf).values()) <= 1e-5


def test_mean_pooling_off_works_in_keras():
    """HF's TF classes crash here; ours match PyTorch."""
    config = Data2VecVisionConfig(**SMALL, use_mean_pooling=False)
    _, pt, tf = _pair("Data2VecVisionForImageClassification", config)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        a = pt(torch.from_numpy(x)).logits.numpy()
    assert np.abs(a - np.asarray(tf(x).logits)).max() <= 1e-5


def test_losses_are_reduced_scalars_and_ignore_255():
    config = Data2VecVisionConfig(**SMALL)
    _, _, cls = _pair("Data2VecVisionForImageClassification", config)
    out = cls(np.zeros((2, 3, 32, 32), np.float32), labels=np.array([1, 2]))
    assert tuple(out.loss.shape) == ()
    _, pt, seg = _pair("Data2VecVisionForSemanticSegmentation", config)
    labels = np.full((2, 32, 32), 255)
    labels[:, :4] = 1
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tf_loss = float(seg(x, labels=labels).loss)
    with torch.no_grad():
        pt_loss = float(pt(torch.from_numpy(x), labels=torch.from_numpy(labels)).loss)
    assert np.isfinite(tf_loss) and abs(tf_loss - pt_loss) <= 1e-5


# ----------------------------------------------------------------------------- training
def _task(n=32, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    y_cls = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    y_seg = (x[:, 0] > 0).astype(np.int64)
    y_seg[:, :2] = 255  # ignored rows
    return x, y_cls, y_seg


TRAIN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
             patch_size=4, out_indices=[1, 2, 3, 3], auxiliary_channels=16, pool_scales=[1, 2], num_labels=2)


@pytest.mark.parametrize("head", ["cls", "seg"])
def test_keras_fit_lowers_loss(head):
    import keras

    keras.utils.set_random_seed(0)
    config = Data2VecVisionConfig(**TRAIN)
    cls = d2v_tf.TFData2VecVisionForImageClassification if head == "cls" else d2v_tf.TFData2VecVisionForSemanticSegmentation
    model = cls(config)
    x, y_cls, y_seg = _task()
    y = y_cls if head == "cls" else y_seg
    model.compile(optimizer=keras.optimizers.Adam(2e-3))  # no loss: the built-in one
    first = model.evaluate(x, y, verbose=0)
    hist = model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert model.evaluate(x, y, verbose=0) < first
    if head == "cls":  # labels inside x work too (a new trace: once is enough)
        hist = model.fit({"pixel_values": x, "labels": y}, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"][0])


@pytest.mark.parametrize("head", ["cls", "seg"])
def test_torch_training_loop_lowers_loss(head):
    torch.manual_seed(0)
    config = Data2VecVisionConfig(**TRAIN)
    cls = d2v_torch.Data2VecVisionForImageClassification if head == "cls" else d2v_torch.Data2VecVisionForSemanticSegmentation
    model = cls(config).train()
    x, y_cls, y_seg = _task()
    y = torch.from_numpy(y_cls if head == "cls" else y_seg)
    x = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(4):
        for i in range(0, 32, 8):
            loss = model(x[i:i + 8], labels=y[i:i + 8]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            losses.append(float(model(x, labels=y).loss))
        model.train()
    assert losses[-1] < losses[0]


def test_training_flag_turns_on_dropout_drop_path_and_batchnorm():
    config = Data2VecVisionConfig(**{**TRAIN, "hidden_dropout_prob": 0.2, "drop_path_rate": 0.3})
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    tf = d2v_tf.TFData2VecVisionForSemanticSegmentation(config)
    eval_a, eval_b = tf(x).logits, tf(x).logits
    assert np.array_equal(eval_a, eval_b)
    bn = tf.fpn1[1]
    before = (bn.moving_mean.numpy().copy(), int(bn.num_batches_tracked.numpy()))
    train_a, train_b = tf(x, training=True).logits, tf(x, training=True).logits
    assert not np.allclose(train_a, train_b)
    assert not np.array_equal(before[0], bn.moving_mean.numpy())
    assert int(bn.num_batches_tracked.numpy()) == before[1] + 2
    pt = d2v_torch.Data2VecVisionForSemanticSegmentation(config)
    xt = torch.from_numpy(x)
    pt.eval()
    with torch.no_grad():
        assert torch.equal(pt(xt).logits, pt(xt).logits)
        pt.train()
        assert not torch.allclose(pt(xt).logits, pt(xt).logits)
    assert int(pt.fpn1[1].num_batches_tracked) == 2


def test_batchnorm_training_step_matches_torch():
    """Batch statistics (biased for the output, unbiased for the running update) as in torch."""
    config = Data2VecVisionConfig(**TRAIN, drop_path_rate=0.0)
    arrays, pt, tf = _pair("Data2VecVisionForSemanticSegmentation", config)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    pt.train()
    with torch.no_grad():
        a = pt(torch.from_numpy(x)).logits.numpy()
    b = np.asarray(tf(x, training=True).logits)
    assert np.abs(a - b).max() <= 1e-4
    after_pt, after_tf = pt.state_arrays(), tf.state_arrays()
    for k, v in after_pt.items():
        if "running" in k or "num_batches" in k:
            assert np.allclose(v, after_tf[k], atol=1e-6), k


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_bad_inputs_raise_clear_errors(framework):
    config = Data2VecVisionConfig(**SMALL, use_mask_token=True)
    _, pt, tf = _pair("Data2VecVisionForSemanticSegmentation", config)

    def call(x, **kw):
        if framework == "torch":
            kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            with torch.no_grad():
                return pt(torch.from_numpy(x), **kw)
        return tf(x, **kw)

    good = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ValueError, match="channels"):
        call(np.zeros((2, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        call(np.zeros((2, 3, 40, 32), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        call(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="empty"):
        call(np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        call(good, labels=np.full((2, 32, 32), 7))
    with pytest.raises(TypeError, match="integers"):
        call(good, labels=np.zeros((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="shape"):
        call(good, labels=np.zeros((2, 32), np.int64))


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_bool_masked_pos_shape_checked(framework):
    config = Data2VecVisionConfig(**SMALL, use_mask_token=True)
    _, pt, tf = _pair("Data2VecVisionModel", config)
    x = np.zeros((2, 3, 32, 32), np.float32)
    bad = np.zeros((2, 15), bool)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        if framework == "torch":
            pt(torch.from_numpy(x), bool_masked_pos=torch.from_numpy(bad))
        else:
            tf(x, bool_masked_pos=bad)
