"""Audio family: oracle parity, cross-framework parity, SpecAugment, CTC, errors, checkpoints, training."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from transformers.models.data2vec import modeling_data2vec_audio as hf_audio

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.cases.audio import SMALL
from crosscheck.runner import check_case, hf_model, torch_inputs
from d2v_common.models import audio as A
from d2v_common.configs import Data2VecAudioConfig
from d2v_common.spec import weight_spec
from d2v_tf.audio import ctc_loss as tf_ctc_loss

AUDIO_CASES = all_cases("small", ["audio"])
HEADS = [
    "Data2VecAudioForCTC",
    "Data2VecAudioForSequenceClassification",
    "Data2VecAudioForAudioFrameClassification",
    "Data2VecAudioForXVector",
]
# No randomness in training: dropout, layerdrop and masking off.
QUIET = dict(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
             final_dropout=0.0, layerdrop=0.0)


def _case(name):
    return next(c for c in AUDIO_CASES if c.name == name)


def _pair(arch, config, seed=0):
    arrays = weight_spec(config, arch).random_arrays(seed)
    pt = getattr(d2v_torch, arch)(config).eval()
    pt.load_arrays(arrays)
    tfm = getattr(d2v_tf, "TF" + arch)(config)
    tfm.load_arrays(arrays)
    return arrays, pt, tfm


def _hf(arch, config, arrays):
    case = type(AUDIO_CASES[0])("x", arch, config, None)
    return hf_model(case, arrays)


def _waves(rng, batch=2, samples=600, pad_from=450):
    x = rng.standard_normal((batch, samples)).astype(np.float32)
    mask = np.ones((batch, samples), dtype=np.int64)
    mask[-1, pad_from:] = 0
    x[-1, pad_from:] = 0.0
    return x, mask


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", AUDIO_CASES, ids=lambda c: c.name)
def test_case_matches_hf_and_across_frameworks(case):
    row = check_case(case, seed=0, reference="hf")
    assert row.error is None, row.error
    assert row.ok, row.to_dict()
    assert row.round_trip == {"pt>tf>pt": True, "pt>h5>pt": True}
    assert row.reference_ok


@pytest.mark.parametrize("name", ["audio-ctc-plain", "audio-xvector-plain", "audio-seq-wsum-bias"])
def test_gradients_match_hf(name):
    """d2v's backward equals HF's, including XVector rows whose TDNN channels are dead (std 0)."""
    case = _case(name)
    config = case.config.copy(**QUIET)
    arrays = weight_spec(config, case.architecture).random_arrays(0)
    rng = np.random.default_rng(2)
    batches = [case.make_inputs(rng) for _ in range(3)]
    inputs = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    grads = []
    for model in (_hf(case.architecture, config, arrays), getattr(d2v_torch, case.architecture)(config)):
        if not isinstance(model, transformers.PreTrainedModel):
            model.load_arrays(arrays)
        model.train()
        model(**torch_inputs(inputs)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    if name == "audio-xvector-plain":  # the case this test is for: some TDNN channel is constant
        with torch.no_grad():
            x = model.projector(model.data2vec_audio(**torch_inputs(
                {k: v for k, v in inputs.items() if k != "labels"})).last_hidden_state)
            for layer in model.tdnn:
                x = layer(x)
        assert bool((x.std(dim=1) == 0).any())
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.isfinite(grads[1][n]).all(), n
        scale = max(1.0, float(grads[0][n].abs().max()))
        assert float((grads[0][n] - grads[1][n]).abs().max()) <= 1e-5 * scale, n


@pytest.mark.parametrize("arch", ["Data2VecAudioModel"] + HEADS)
def test_return_dict_false_tuples(arch):
    """Tuples as HF's, except that FrameClassification keeps its loss (HF drops it)."""
    case = next(c for c in AUDIO_CASES if c.architecture == arch and "plain" in c.name)
    arrays, pt, tfm = _pair(arch, case.config)
    inputs = case.make_inputs(np.random.default_rng(1))
    with torch.no_grad():
        ours = pt(**torch_inputs(inputs), output_hidden_states=True, return_dict=False)
        ref = _hf(arch, case.config, arrays)(**torch_inputs(inputs), output_hidden_states=True, return_dict=False)
    ours_tf = tfm(**inputs, output_hidden_states=True, return_dict=False)
    if arch == "Data2VecAudioForAudioFrameClassification":
        with torch.no_grad():
            loss = pt(**torch_inputs(inputs)).loss
        assert torch.equal(ours[0], loss)
        assert abs(float(ours_tf[0]) - float(loss)) <= 1e-5
        ours, ours_tf = ours[1:], ours_tf[1:]
    assert len(ours) == len(ref) == len(ours_tf)
    for a, b, c in zip(ours, ref, ours_tf):
        a, b, c = (x if isinstance(x, tuple) else (x,) for x in (a, b, c))
        for u, v, w in zip(a, b, c):
            assert float((u - v).abs().max()) <= 1e-5
            # a summed CTC loss sits near 140, where float32 steps are 1.5e-5 (see crosscheck.cases.audio)
            tol = 1e-4 if u.numel() == 1 else 1e-5
            assert np.abs(u.numpy() - np.asarray(w)).max() <= tol


# -------------------------------------------------------------------------- SpecAugment


def _mask_config(**extra):
    return Data2VecAudioConfig(**{**SMALL, **QUIET, "mask_time_prob": 0.3, "mask_time_length": 3, **extra})


def test_given_mask_time_indices_match_hf_in_training_and_eval():
    config = _mask_config()
    arrays, pt, tfm = _pair("Data2VecAudioModel", config)
    hf = _hf("Data2VecAudioModel", config, arrays)
    x, mask = _waves(np.random.default_rng(0))
    frames = int(A.feature_lengths(config, x.shape[1]))
    spans = A.compute_mask_indices((2, frames), 0.3, 3, [frames, 44], 2, np.random.default_rng(5))
    assert spans.any()
    t = torch_inputs({"input_values": x, "attention_mask": mask, "mask_time_indices": spans})
    for training in (True, False):
        pt.train(training)
        hf.train(training)
        with torch.no_grad():
            ours, ref = pt(**t).last_hidden_state, hf(**t).last_hidden_state
            plain = pt(t["input_values"], t["attention_mask"]).last_hidden_state
        keras_out = tfm(x, attention_mask=mask, mask_time_indices=spans, training=training).last_hidden_state
        assert float((ours - ref).abs().max()) <= 1e-5
        assert np.abs(ours.numpy() - np.asarray(keras_out)).max() <= 1e-5
        # the mask matters: without it (and in eval) the output differs
        if not training:
            assert float((ours - plain).abs().max()) > 1e-2


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_random_masks_only_in_training(framework):
    config = _mask_config(mask_feature_prob=0.3, mask_feature_length=2)
    unmasked = config.copy(mask_time_prob=0.0, mask_feature_prob=0.0)
    arrays = weight_spec(config, "Data2VecAudioModel").random_arrays(0)
    plain_arrays = {k: v for k, v in arrays.items() if k != "masked_spec_embed"}
    x, mask = _waves(np.random.default_rng(0))
    if framework == "torch":
        model = d2v_torch.Data2VecAudioModel(config)
        model.load_arrays(arrays)
        ref = d2v_torch.Data2VecAudioModel(unmasked)
        ref.load_arrays(plain_arrays)
        t = torch_inputs({"input_values": x, "attention_mask": mask})

        def run(training, seed=0):
            model.train(training)
            torch.manual_seed(seed)
            with torch.no_grad():
                return model(**t).last_hidden_state.numpy()

        with torch.no_grad():
            expected = ref.eval()(**t).last_hidden_state.numpy()
    else:
        model = d2v_tf.TFData2VecAudioModel(config)
        model.load_arrays(arrays)
        ref = d2v_tf.TFData2VecAudioModel(unmasked)
        ref.load_arrays(plain_arrays)

        def run(training, seed=0):
            keras.utils.set_random_seed(seed)
            return np.asarray(model(x, attention_mask=mask, training=training).last_hidden_state)

        expected = np.asarray(ref(x, attention_mask=mask).last_hidden_state)
    assert np.array_equal(run(False), expected)
    masked = run(True)
    assert np.abs(masked - expected).max() > 1e-2
    assert np.array_equal(masked, run(True))  # seeded: reproducible
    assert not np.array_equal(masked, run(True, seed=1))


def test_mask_indices_semantics_match_hf():
    """Same rules as HF's helper (its RNG draws cannot be matched): deterministic corners
    exactly, and the average number of masked positions per row statistically."""
    # everything masked / a row too short for a span gets only its last position
    for args in [((3, 20), 1.0, 1, [20, 20, 20], 0), ((2, 12), 0.5, 4, [12, 3], 1)]:
        shape, prob, length, lengths, min_masks = args
        hf_mask = hf_audio._compute_mask_indices(shape, prob, length, torch.tensor(
            [[1] * n + [0] * (shape[1] - n) for n in lengths]), min_masks)
        ours = A.compute_mask_indices(shape, prob, length, lengths, min_masks, np.random.default_rng(0))
        if prob == 1.0:
            assert ours.all() and hf_mask.all()
        else:
            assert np.array_equal(ours[1], hf_mask[1]) and ours[1].tolist() == [False] * 11 + [True]
    shape, lengths = (2, 50), [50, 30]
    attn = torch.tensor([[1] * n + [0] * (50 - n) for n in lengths])
    rng = np.random.default_rng(0)
    np.random.seed(0)
    ours = np.mean([A.compute_mask_indices(shape, 0.3, 3, lengths, 2, rng).sum(-1) for _ in range(3000)], axis=0)
    ref = np.mean([hf_audio._compute_mask_indices(shape, 0.3, 3, attn, 2).sum(-1) for _ in range(3000)], axis=0)
    assert np.abs(ours - ref).max() < 0.3, (ours, ref)
    one = A.compute_mask_indices(shape, 0.3, 3, lengths, 2, rng)
    assert not one[1, 30:].any()  # spans stay inside the row


# ------------------------------------------------------------------------------ freezing


def test_freeze_feature_encoder_both_frameworks():
    config = Data2VecAudioConfig(**{**SMALL, **QUIET})
    arrays, pt, tfm = _pair("Data2VecAudioForSequenceClassification", config)
    x, mask = _waves(np.random.default_rng(0))
    labels = np.array([0, 2])
    pt.freeze_feature_encoder()
    pt.train()
    pt(**torch_inputs({"input_values": x, "attention_mask": mask, "labels": labels})).loss.backward()
    for name, p in pt.named_parameters():
        frozen = name.startswith("data2vec_audio.feature_extractor.")
        assert p.requires_grad is not frozen and (p.grad is None) is frozen, name

    tfm.freeze_feature_encoder()
    frozen = {v.path for v in tfm.data2vec_audio.feature_extractor.weights}
    assert frozen and not frozen & {v.path for v in tfm.trainable_variables}
    before = tfm.state_arrays()
    tfm.compile(optimizer=keras.optimizers.SGD(0.1))
    tfm.fit({"input_values": x, "attention_mask": mask}, labels, epochs=1, verbose=0)
    after = tfm.state_arrays()
    for name in before:
        if name.startswith("data2vec_audio.feature_extractor."):
            assert np.array_equal(before[name], after[name]), name
    for name in ("classifier.weight", "projector.weight", "data2vec_audio.feature_projection.projection.weight",
                 "data2vec_audio.encoder.layers.0.feed_forward.intermediate_dense.weight"):
        assert not np.array_equal(before[name], after[name]), name


# ----------------------------------------------------------------------------------- CTC


def _torch_ctc(logits, labels, lengths, blank, reduction, zero_infinity):
    """HF's call of torch's CTC; returns (loss, gradient wrt the logits)."""
    lt = torch.from_numpy(logits).requires_grad_()
    keep = torch.from_numpy(labels) >= 0
    loss = torch.nn.functional.ctc_loss(
        torch.log_softmax(lt, -1).transpose(0, 1), torch.from_numpy(labels).masked_select(keep),
        torch.from_numpy(lengths), keep.sum(-1), blank=blank, reduction=reduction, zero_infinity=zero_infinity,
    )
    if torch.isfinite(loss):
        loss.backward()
    return float(loss.detach()), lt.grad


def _tf_ctc(logits, labels, lengths, blank, reduction, zero_infinity):
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = tf_ctc_loss(variable, labels, lengths, blank, reduction, zero_infinity)
    graph = tf.function(tf_ctc_loss)(logits, labels, lengths, blank, reduction, zero_infinity)
    assert float(graph) == float(loss) or np.isinf(float(graph)) and np.isinf(float(loss))
    return float(loss), tape.gradient(loss, variable).numpy()


@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tf_ctc_matches_torch(reduction, zero_infinity, blank):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 12, 7)).astype(np.float32)
    labels = np.array([
        [1, 3, 4, -100, -100, -100],
        [4, 4, 5, 6, 1, 3],  # repeats need a blank between them
        [3, -100, 5, -100, -100, -100],  # a -100 inside is dropped, as in HF
        [5, 5, 5, 5, 5, 5],  # needs 11 frames, has 8: no alignment
        [-100] * 6,  # empty target
    ])
    lengths = np.array([12, 12, 9, 8, 7])
    args = (blank, reduction, zero_infinity)
    expected, expected_grad = _torch_ctc(logits, labels, lengths, *args)
    got, grad = _tf_ctc(logits, labels, lengths, *args)
    if zero_infinity:
        assert abs(got - expected) <= 1e-5
        assert np.abs(grad - expected_grad.numpy()).max() <= 1e-5
        assert not grad[3].any()  # the impossible row gets no gradient
    else:
        assert np.isinf(expected) and np.isinf(got)
        rows = [0, 1, 2, 4]
        expected, expected_grad = _torch_ctc(logits[rows], labels[rows], lengths[rows], *args)
        got, grad = _tf_ctc(logits[rows], labels[rows], lengths[rows], *args)
        assert abs(got - expected) <= 1e-5
        assert np.abs(grad - expected_grad.numpy()).max() <= 1e-5


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_bad_inputs_raise_clear_errors(framework):
    config = Data2VecAudioConfig(**{**SMALL, **QUIET})
    need = A.min_input_samples(config)
    assert need == 20
    arrays, pt, tfm = _pair("Data2VecAudioForCTC", config)

    def call(**inputs):
        if framework == "torch":
            with torch.no_grad():
                return pt(**torch_inputs(inputs))
        return tfm(**inputs)

    rng = np.random.default_rng(0)
    x, mask = _waves(rng, samples=100, pad_from=90)
    with pytest.raises(ValueError, match=f"at least {need} samples"):
        call(input_values=x[:, : need - 1])
    short = mask.copy()
    short[1, 10:] = 0
    with pytest.raises(ValueError, match=f"at least {need}"):
        call(input_values=x, attention_mask=short)
    with pytest.raises(TypeError, match="floating point"):
        call(input_values=(x * 100).astype(np.int64))
    frames = int(A.feature_lengths(config, 90))  # 8 frames in the padded row
    long = np.full((2, frames + 1), 1, dtype=np.int64)
    with pytest.raises(ValueError, match="output frames"):
        call(input_values=x, attention_mask=mask, labels=long)
    with pytest.raises(ValueError, match="vocab_size"):
        call(input_values=x, labels=np.array([[1, config.vocab_size], [1, 2]]))
    with pytest.raises(ValueError, match="blank"):
        call(input_values=x, labels=np.array([[1, config.pad_token_id], [1, 2]]))
    # with ctc_zero_infinity the too-long row just counts 0, as in torch
    zinf = config.copy(ctc_zero_infinity=True)
    model = d2v_torch.Data2VecAudioForCTC(zinf) if framework == "torch" else d2v_tf.TFData2VecAudioForCTC(zinf)
    model.load_arrays(arrays)
    labels = np.array([[1, 2] + [-100] * (frames - 1), [1] * (frames + 1)])
    inputs = {"input_values": x, "attention_mask": mask, "labels": labels}
    if framework == "torch":
        with torch.no_grad():
            loss = float(model(**torch_inputs(inputs)).loss)
            first = float(model(**torch_inputs({k: v[:1] for k, v in inputs.items()})).loss)
    else:
        loss = float(model(**inputs).loss)
        first = float(model(**{k: v[:1] for k, v in inputs.items()}).loss)
    assert np.isfinite(loss) and abs(loss - first) <= 1e-4

    # heads that read the encoder states refuse the adapter; masks need the mask embedding
    seq_cls = getattr(d2v_torch if framework == "torch" else d2v_tf,
                      ("" if framework == "torch" else "TF") + "Data2VecAudioForSequenceClassification")
    with pytest.raises(ValueError, match="adapter"):
        seq_cls(config.copy(add_adapter=True))
    base = d2v_torch.Data2VecAudioModel if framework == "torch" else d2v_tf.TFData2VecAudioModel
    no_embed = base(config)
    spans = np.zeros((2, int(A.feature_lengths(config, 100))), dtype=bool)
    inputs = {"input_values": x, "mask_time_indices": spans}
    with pytest.raises(ValueError, match="mask_time_prob"):
        no_embed(**(torch_inputs(inputs) if framework == "torch" else inputs))
    with_embed = base(config.copy(mask_time_prob=0.1))
    inputs["mask_time_indices"] = spans[:, :-1]
    with pytest.raises(ValueError, match="mask_time_indices must have shape"):
        with_embed(**(torch_inputs(inputs) if framework == "torch" else inputs))
    # XVector needs two TDNN frames for its std
    xv = getattr(d2v_torch if framework == "torch" else d2v_tf,
                 ("" if framework == "torch" else "TF") + "Data2VecAudioForXVector")(config)
    few = x[:, : A.min_xvector_samples(config) - 1]
    with pytest.raises(ValueError, match="2 frames after the TDNN"):
        xv(**(torch_inputs({"input_values": few}) if framework == "torch" else {"input_values": few}))


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("arch", HEADS)
def test_hf_base_checkpoint_into_heads_both_frameworks(arch, tmp_path):
    config = Data2VecAudioConfig(**SMALL)
    hf_base = _hf("Data2VecAudioModel", config, weight_spec(config, "Data2VecAudioModel").random_arrays(4))
    hf_base.save_pretrained(tmp_path)
    x, mask = _waves(np.random.default_rng(0))
    with torch.no_grad():
        expected = hf_base(torch.from_numpy(x), torch.from_numpy(mask)).last_hidden_state.numpy()
    head_params = {p.name for p in weight_spec(config, arch) if not p.name.startswith("data2vec_audio.")}
    for package, prefix in ((d2v_torch, ""), (d2v_tf, "TF")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(package, prefix + arch).from_pretrained(tmp_path)
        assert set(model.load_report.newly_initialized) == head_params
        assert not model.load_report.unexpected
        if package is d2v_torch:
            with torch.no_grad():
                got = model.data2vec_audio(torch.from_numpy(x), torch.from_numpy(mask)).last_hidden_state.numpy()
        else:
            got = np.asarray(model.data2vec_audio(x, attention_mask=mask).last_hidden_state)
        assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("arch", ["Data2VecAudioForCTC", "Data2VecAudioForXVector"])
def test_keras_checkpoint_into_torch(arch, tmp_path):
    """Weights saved by the Keras classes (safetensors and tf_model.h5) load into PyTorch bit-exactly."""
    config = Data2VecAudioConfig(**{**SMALL, "add_adapter": arch.endswith("CTC")})
    tfm = getattr(d2v_tf, "TF" + arch)(config)  # fresh random init on the Keras side
    tfm.save_pretrained(tmp_path, tf_h5=True)
    expected = tfm.state_arrays()
    x, mask = _waves(np.random.default_rng(0))
    keras_out = np.asarray(tfm(x, attention_mask=mask).logits)
    for fmt in ("safetensors", "tf-h5"):
        pt = getattr(d2v_torch, arch).from_pretrained(tmp_path, checkpoint_format=fmt)
        got = pt.state_arrays()
        assert all(np.array_equal(got[k], v) for k, v in expected.items())
        with torch.no_grad():
            logits = pt(torch.from_numpy(x), torch.from_numpy(mask)).logits.numpy()
        assert np.abs(logits - keras_out).max() <= 1e-5


# ------------------------------------------------------------------------------ training


def _ctc_dataset(config, rng, n=16, samples=480):
    x = np.zeros((n, samples), dtype=np.float32)
    masks = np.zeros((n, samples), dtype=np.int64)
    labels = []
    for i in range(n):
        keep = int(rng.integers(300, samples + 1))
        x[i, :keep] = rng.standard_normal(keep)
        masks[i, :keep] = 1
        labels.append(rng.integers(1, config.vocab_size, int(rng.integers(2, 6))))

    def rows():
        for i in range(n):
            yield {"input_values": x[i], "attention_mask": masks[i]}, labels[i]

    features = {"input_values": tf.TensorSpec((samples,), tf.float32),
                "attention_mask": tf.TensorSpec((samples,), tf.int64)}
    spec = (features, tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(rows, output_signature=spec)
    return ds.padded_batch(4, padding_values=({"input_values": 0.0, "attention_mask": np.int64(0)}, np.int64(-100)))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_keras_fit_lowers_ctc_loss_with_variable_length_labels(reduction):
    keras.utils.set_random_seed(0)
    config = Data2VecAudioConfig(**{**SMALL, **QUIET, "ctc_loss_reduction": reduction})
    model = d2v_tf.TFData2VecAudioForCTC(config)
    ds = _ctc_dataset(config, np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=6, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert history[-1] < 0.7 * history[0], history


def test_keras_fit_lowers_sequence_classification_loss():
    keras.utils.set_random_seed(0)
    config = Data2VecAudioConfig(**{**SMALL, **QUIET, "num_labels": 2})
    model = d2v_tf.TFData2VecAudioForSequenceClassification(config)
    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    t = np.arange(480) / 16000.0
    freq = np.where(y == 0, 300.0, 2500.0)[:, None]
    x = (np.sin(2 * np.pi * freq * t) + 0.1 * rng.standard_normal((16, 480))).astype(np.float32)
    mask = np.ones_like(x, dtype=np.int64)
    mask[1::4, 400:] = 0
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit({"input_values": x, "attention_mask": mask}, y, batch_size=4, epochs=6, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]


@pytest.mark.parametrize("arch", ["Data2VecAudioForAudioFrameClassification", "Data2VecAudioForXVector"])
def test_keras_fit_other_heads(arch):
    """Frame labels as (batch, frames, num_labels) and speaker ids, given as y or inside x; fit,
    evaluate and a direct call agree on the built-in loss."""
    keras.utils.set_random_seed(0)
    config = Data2VecAudioConfig(**{**SMALL, **QUIET})
    model = getattr(d2v_tf, "TF" + arch)(config)
    rng = np.random.default_rng(0)
    x, mask = _waves(rng, batch=8, samples=480, pad_from=400)
    if arch.endswith("FrameClassification"):
        frames = int(A.feature_lengths(config, 480))
        y = np.eye(config.num_labels, dtype=np.float32)[(np.arange(frames)[None, :] // 10 + np.arange(8)[:, None]) % 3]
    else:
        y = np.arange(8) % config.num_labels
    inputs = {"input_values": x, "attention_mask": mask}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = model.state_arrays()
    history = model.fit(inputs, y, batch_size=4, epochs=3, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert not np.array_equal(before["classifier.weight"], model.state_arrays()["classifier.weight"])
    assert abs(model.evaluate(inputs, y, batch_size=8, verbose=0) - float(model(**inputs, labels=y).loss)) <= 1e-5
    loss_in_x = model.fit({**inputs, "labels": y}, batch_size=4, verbose=0)
    assert np.isfinite(loss_in_x.history["loss"][0])
