"""Text family: oracle parity, cross-framework parity, the decoder cache, checkpoints, tied
embeddings, resizing, input errors and Keras training."""

import warnings

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.cases.base import Case
from crosscheck.runner import check_case, max_abs_diff, run_hf, run_tf, run_torch
from d2v_common.configs import Data2VecTextConfig
from d2v_common.spec import weight_spec
from d2v_common.spec.text import ARCHITECTURES
from tests.oracle import hf_config
from crosscheck.cases import tiny

TEXT_CASES = all_cases("small", ["text"])
SMALL = dict(tiny.TEXT, num_labels=3)
HEADS = [a for a in ARCHITECTURES if a != "Data2VecTextModel"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "newly initialized" reports, CausalLM on an encoder config
        yield


def _models(arch, config, seed=0, hf=False, **kwargs):
    arrays = weight_spec(config, arch, **kwargs).random_arrays(seed)
    pt = getattr(d2v_torch, arch)(config, **kwargs).eval()
    pt.load_arrays(arrays)
    tf = getattr(d2v_tf, "TF" + arch)(config, **kwargs)
    tf.load_arrays(arrays)
    if not hf:
        return arrays, pt, tf
    ref = getattr(transformers, arch)(hf_config(config), **kwargs).eval()
    full = weight_spec(config, arch, **kwargs).tie(dict(arrays))
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in full.items()}, strict=True)
    return arrays, pt, tf, ref


def _np(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


# ------------------------------------------------------------------------- oracle parity
@pytest.mark.parametrize("case", TEXT_CASES, ids=lambda c: c.name)
def test_case_matches_hf_and_across_frameworks(case):
    row = check_case(case, seed=0, reference="hf")
    assert row.error is None, row.error
    assert row.ok, row.to_dict()
    assert row.round_trip == {"pt>tf>pt": True, "pt>h5>pt": True}
    assert row.reference_ok and row.reference_diff <= 1e-5


def test_cases_cover_every_class_and_config_variant():
    assert {c.architecture for c in TEXT_CASES} == set(ARCHITECTURES)
    configs = [c.config for c in TEXT_CASES]
    assert {c.position_embedding_type for c in configs} == {"absolute", "relative_key", "relative_key_query"}
    assert any(c.is_decoder and not c.add_cross_attention for c in configs)
    assert any(c.add_cross_attention for c in configs)
    assert {c.problem_type for c in configs if c.num_labels != 1} >= {None, "multi_label_classification"}
    assert any(c.num_labels == 1 for c in configs)
    for case in TEXT_CASES:  # padded batches and ignored labels everywhere
        inputs = case.make_inputs(np.random.default_rng(1))
        assert (inputs["attention_mask"] == 0).any()
        if "labels" in inputs and inputs["labels"].dtype == np.int64 and inputs["labels"].ndim == 2:
            assert (inputs["labels"] == -100).any()


def test_inputs_embeds_position_ids_head_mask_and_3d_mask_match_hf():
    config = Data2VecTextConfig(**SMALL, type_vocab_size=2)
    arrays = weight_spec(config, "Data2VecTextModel").random_arrays(0)
    rng = np.random.default_rng(0)
    mask3 = (rng.random((2, 7, 7)) < 0.7).astype(np.float32)
    mask3[:, np.arange(7), np.arange(7)] = 1
    inputs = {
        "inputs_embeds": rng.standard_normal((2, 7, 32)).astype(np.float32),
        "position_ids": rng.integers(2, 40, (2, 7)),
        "token_type_ids": rng.integers(0, 2, (2, 7)),
        "attention_mask": mask3,
        "head_mask": np.array([[1, 0, 1, 1], [0, 1, 1, 1]], np.float32),
    }
    case = Case("text-model-extra", "Data2VecTextModel", config, lambda r: {},
                call_kwargs=dict(output_attentions=True, output_hidden_states=True))
    want, got, got_tf = (run(case, arrays, inputs) for run in (run_hf, run_torch, run_tf))
    assert max(max_abs_diff(want, got).values()) <= 1e-5
    assert max(max_abs_diff(got, got_tf).values()) <= 1e-5
    # inputs_embeds without position ids count from pad+1 (HF's rule), multiple choice flattens them
    config = Data2VecTextConfig(**SMALL, position_embedding_type="relative_key")
    arrays = weight_spec(config, "Data2VecTextForMultipleChoice").random_arrays(1)
    inputs = {"inputs_embeds": rng.standard_normal((2, 3, 6, 32)).astype(np.float32), "labels": np.array([2, 0])}
    case = Case("text-mc-embeds", "Data2VecTextForMultipleChoice", config, lambda r: {})
    want, got, got_tf = (run(case, arrays, inputs) for run in (run_hf, run_torch, run_tf))
    assert max(max_abs_diff(want, got).values()) <= 1e-5
    assert max(max_abs_diff(got, got_tf).values()) <= 1e-5


def _compare_tuples(want, got, tol=1e-5):
    assert len(want) == len(got), (len(want), len(got))
    for a, b in zip(want, got):
        if a is None or b is None:
            assert a is None and b is None
            continue
        if hasattr(a, "to_legacy_cache"):  # HF's cache object; an unused cross slot reads (None, None)
            a = tuple(tuple(t for t in layer if t is not None) for layer in a.to_legacy_cache())
        if isinstance(a, (tuple, list)):
            _compare_tuples(a, b, tol)
        else:
            assert _np(a).shape == _np(b).shape
            assert np.abs(_np(a) - _np(b)).max() <= tol


@pytest.mark.parametrize(
    "arch, extra, kwargs",
    [
        ("Data2VecTextModel", {}, dict(add_pooling_layer=False)),
        ("Data2VecTextModel", dict(is_decoder=True), {}),
        ("Data2VecTextForCausalLM", dict(is_decoder=True), {}),
        ("Data2VecTextForQuestionAnswering", dict(num_labels=2), {}),
        ("Data2VecTextForMultipleChoice", {}, {}),
    ],
)
def test_return_dict_false_tuples_follow_hf(arch, extra, kwargs):
    config = Data2VecTextConfig(**{**SMALL, **extra})
    _, pt, tf, hf = _models(arch, config, hf=True, **kwargs)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (2, 3, 6) if arch.endswith("MultipleChoice") else (2, 6))
    call = dict(output_attentions=True, return_dict=False)
    if arch.endswith("QuestionAnswering"):
        call.update(start_positions=np.array([1, 2]), end_positions=np.array([3, 9]))
    if arch.endswith("MultipleChoice"):
        call.update(labels=np.array([1, 2]))
    tcall = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in call.items()}
    with torch.no_grad():
        want = hf(torch.from_numpy(ids), **tcall)
        got = pt(torch.from_numpy(ids), **tcall)
    got_tf = tf(ids, **call)
    assert isinstance(got, tuple) and isinstance(got_tf, tuple)
    _compare_tuples(want, got)
    _compare_tuples(got, got_tf)
    if arch == "Data2VecTextModel" and not kwargs.get("add_pooling_layer", True):
        assert got[1] is None and got_tf[1] is None  # HF keeps the empty pooled slot


# --------------------------------------------------------------------------------- cache
@pytest.mark.parametrize("variant", ["absolute", "relative_key", "relative_key_query", "cross"])
def test_incremental_decoding_equals_full_pass(variant):
    extra = dict(add_cross_attention=True) if variant == "cross" else dict(position_embedding_type=variant)
    config = Data2VecTextConfig(**SMALL, is_decoder=True, **extra)
    _, pt, tf, hf = _models("Data2VecTextForCausalLM", config, hf=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (2, 8))
    kw = {}
    if variant == "cross":
        enc_mask = np.ones((2, 5), np.int64)
        enc_mask[1, -2:] = 0
        states = rng.standard_normal((2, 5, 32)).astype(np.float32)
        kw = dict(encoder_hidden_states=states, encoder_attention_mask=enc_mask)
    tkw = {k: torch.from_numpy(v) for k, v in kw.items()}
    t = torch.from_numpy(ids)

    def steps(model, to_input, first=5):
        """A prefix of ``first`` tokens, then one token at a time, with an explicit growing mask."""
        out = model(to_input(ids[:, :first]), attention_mask=to_input(np.ones((2, first), np.int64)), use_cache=True,
                    **(tkw if to_input is torch.from_numpy else kw))
        logits, past = [_np(out.logits)], out.past_key_values
        for i in range(first, ids.shape[1]):
            out = model(to_input(ids[:, i:i + 1]), attention_mask=to_input(np.ones((2, i + 1), np.int64)),
                        past_key_values=past, use_cache=True, **(tkw if to_input is torch.from_numpy else kw))
            logits.append(_np(out.logits))
            past = out.past_key_values
        return np.concatenate(logits, axis=1), past

    with torch.no_grad():
        full = pt(t, use_cache=False, **tkw).logits.numpy()
        want = hf(t, use_cache=False, **tkw).logits.numpy()
        inc, past = steps(pt, torch.from_numpy)
        hf_inc, _ = steps(hf, torch.from_numpy, first=1)  # token by token: HF's cached path is right there
        # an HF cache object goes straight into d2v
        hf_cache = hf(t[:, :1], use_cache=True, **tkw).past_key_values
        for i in range(1, 4):
            hf_cache = hf(t[:, i:i + 1], past_key_values=hf_cache, use_cache=True, **tkw).past_key_values
        mixed = pt(t[:, 4:5], past_key_values=hf_cache, use_cache=True, **tkw).logits.numpy()
        ref_step = hf(t[:, :5], use_cache=False, **tkw).logits.numpy()[:, 4:5]
    tf_full = np.asarray(tf(ids, use_cache=False, **kw).logits)
    tf_inc, tf_past = steps(tf, lambda a: a)
    assert np.abs(full - want).max() <= 1e-5
    assert np.abs(inc - full).max() <= 1e-5
    assert np.abs(hf_inc - full).max() <= 1e-5
    assert np.abs(mixed - ref_step).max() <= 1e-5
    assert np.abs(tf_inc - tf_full).max() <= 1e-5
    assert np.abs(tf_full - full).max() <= 1e-5
    for layers in (past, tf_past):  # HF's legacy layout
        assert len(layers) == config.num_hidden_layers
        for layer in layers:
            assert len(layer) == (4 if variant == "cross" else 2)
            assert tuple(layer[0].shape) == (2, 4, 8, 8)
            if variant == "cross":
                assert tuple(layer[2].shape) == (2, 4, 5, 8)


def test_hf_cache_with_relative_positions_is_not_reproduced():
    """HF's use_cache=True first pass puts every query of a relative-position decoder at the
    last position; d2v gives the cache-free numbers there too (documented deviation)."""
    config = Data2VecTextConfig(**SMALL, is_decoder=True, position_embedding_type="relative_key")
    _, pt, _, hf = _models("Data2VecTextForCausalLM", config, hf=True)
    t = torch.from_numpy(np.random.default_rng(0).integers(3, 99, (2, 6)))
    with torch.no_grad():
        ours = pt(t, use_cache=True).logits
        hf_cached, hf_plain = hf(t, use_cache=True).logits, hf(t, use_cache=False).logits
    assert (hf_cached - hf_plain).abs().max() > 1e-2
    assert (ours - hf_plain).abs().max() <= 1e-5


# --------------------------------------------------------------------------- checkpoints
def test_base_checkpoint_loads_into_every_head_in_both_frameworks(tmp_path):
    config = Data2VecTextConfig(**{**SMALL, "num_labels": 2})
    base = d2v_torch.Data2VecTextModel(config)
    base.load_arrays(weight_spec(config, "Data2VecTextModel").random_arrays(3))
    base.save_pretrained(tmp_path)
    want = base.state_arrays()
    for arch in HEADS:
        spec = weight_spec(config, arch)
        head_names = {p.name for p in spec.stored() if not p.name.startswith("data2vec_text.")}
        for cls in (getattr(d2v_torch, arch), getattr(d2v_tf, "TF" + arch)):
            model = cls.from_pretrained(tmp_path)
            report = model.load_report
            assert set(report.newly_initialized) == head_names, (cls.__name__, report.newly_initialized)
            unexpected = set() if arch.endswith("MultipleChoice") else {"pooler.dense.weight", "pooler.dense.bias"}
            assert set(report.unexpected) == unexpected
            got = model.state_arrays()
            for name, value in want.items():
                if "data2vec_text." + name in spec:  # the pooler only where the head has one
                    assert np.array_equal(got["data2vec_text." + name], value), (cls.__name__, name)
    # and a head checkpoint back into the bare model: prefix stripped, head listed as unused
    head = d2v_tf.TFData2VecTextForTokenClassification.from_pretrained(tmp_path)
    head.save_pretrained(tmp_path / "head")
    bare = d2v_torch.Data2VecTextModel.from_pretrained(tmp_path / "head")
    assert set(bare.load_report.unexpected) == {"classifier.weight", "classifier.bias"}
    assert bare.load_report.newly_initialized == ["pooler.dense.weight", "pooler.dense.bias"]


def test_tied_decoder_is_saved_once_and_restored(tmp_path):
    config = Data2VecTextConfig(**SMALL)
    arrays, pt, tf = _models("Data2VecTextForMaskedLM", config)
    pt.save_pretrained(tmp_path / "pt")
    stored = load_file(str(tmp_path / "pt" / "model.safetensors"))
    assert "lm_head.decoder.weight" not in stored and "lm_head.decoder.bias" not in stored
    assert "data2vec_text.embeddings.word_embeddings.weight" in stored and "lm_head.bias" in stored
    back = d2v_torch.Data2VecTextForMaskedLM.from_pretrained(tmp_path / "pt")
    assert back.load_report.clean
    assert back.lm_head.decoder.weight is back.data2vec_text.embeddings.word_embeddings.weight
    assert back.lm_head.decoder.bias is back.lm_head.bias
    tf_back = d2v_tf.TFData2VecTextForMaskedLM.from_pretrained(tmp_path / "pt")
    assert not any("decoder" in v.path for v in tf_back.weights)
    ids = np.random.default_rng(0).integers(3, 99, (2, 6))
    with torch.no_grad():
        a = back(torch.from_numpy(ids)).logits.numpy()
        back.data2vec_text.embeddings.word_embeddings.weight[7] += 1.0  # the tie is live
        assert torch.equal(back.lm_head.decoder.weight[7], back.data2vec_text.embeddings.word_embeddings.weight[7])
    assert np.abs(a - np.asarray(tf_back(ids).logits)).max() <= 1e-5
    # a checkpoint written by transformers (which also leaves the tied copies out) loads cleanly
    hf = transformers.Data2VecTextForMaskedLM(hf_config(config))
    hf.save_pretrained(tmp_path / "hf")
    for cls in (d2v_torch.Data2VecTextForMaskedLM, d2v_tf.TFData2VecTextForMaskedLM):
        model = cls.from_pretrained(tmp_path / "hf")
        assert model.load_report.clean, str(model.load_report)
        with torch.no_grad():
            want = hf.eval()(torch.from_numpy(ids)).logits.numpy()
        got = model(torch.from_numpy(ids)).logits if cls is d2v_torch.Data2VecTextForMaskedLM else model(ids).logits
        assert np.abs(_np(got) - want).max() <= 1e-5
    # untied: the decoder is its own tensor, saved and restored
    config = Data2VecTextConfig(**SMALL, tie_word_embeddings=False)
    _, pt, _ = _models("Data2VecTextForCausalLM", config)
    pt.save_pretrained(tmp_path / "untied")
    stored = load_file(str(tmp_path / "untied" / "model.safetensors"))
    assert "lm_head.decoder.weight" in stored
    tf_back = d2v_tf.TFData2VecTextForCausalLM.from_pretrained(tmp_path / "untied")
    got = tf_back.state_arrays()["lm_head.decoder.weight"]
    assert np.array_equal(got, stored["lm_head.decoder.weight"])
    assert not np.array_equal(got, stored["data2vec_text.embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_resize_token_embeddings(framework, tmp_path):
    config = Data2VecTextConfig(**SMALL)
    _, pt, tf = _models("Data2VecTextForMaskedLM", config)
    model = pt if framework == "torch" else tf
    ids = np.random.default_rng(0).integers(3, 99, (2, 6))

    def logits(m, x):
        with torch.no_grad():
            out = m(torch.from_numpy(x)) if framework == "torch" else m(x)
        return _np(out.logits)

    before = logits(model, ids)
    old_rows = _np(model.get_input_embeddings().weight if framework == "torch" else
                   model.get_input_embeddings().embeddings).copy()
    n_weights = len(model.weights) if framework == "tf" else None
    emb = model.resize_token_embeddings(120, pad_to_multiple_of=8)  # 120 is already a multiple
    table = _np(emb.weight if framework == "torch" else emb.embeddings)
    assert table.shape == (120, 32) and model.config.vocab_size == 120
    assert np.array_equal(table[:99], old_rows)
    assert np.abs(table[99:]).max() > 0 and np.abs(table[99:]).std() < 0.1  # fresh rows, init std 0.02
    assert model.spec["lm_head.bias"].shape == (120,)
    assert model.data2vec_text.spec["embeddings.word_embeddings.weight"].shape == (120, 32)
    after = logits(model, ids)
    assert after.shape == (2, 6, 120)
    assert np.abs(after[..., :99] - before).max() <= 1e-5  # old rows and old bias entries kept
    assert logits(model, np.array([[110, 119, 5]])).shape == (1, 3, 120)
    if framework == "torch":
        assert model.lm_head.decoder.weight is model.data2vec_text.embeddings.word_embeddings.weight
    else:
        assert len(model.weights) == n_weights  # swapped, not added
        assert model.lm_head.bias.shape == (120,)
        import keras

        model.compile(optimizer=keras.optimizers.Adam(1e-3))  # compile again after resizing
        labels = np.where(ids % 2 == 0, ids, -100)
        assert np.isfinite(model.fit({"input_ids": ids}, labels, epochs=1, verbose=0).history["loss"][0])
        after = logits(model, ids)
    model.save_pretrained(tmp_path)
    other = (d2v_tf.TFData2VecTextForMaskedLM if framework == "torch" else d2v_torch.Data2VecTextForMaskedLM)
    reloaded = other.from_pretrained(tmp_path)
    assert reloaded.load_report.clean and reloaded.config.vocab_size == 120
    with torch.no_grad():
        got = reloaded(torch.from_numpy(ids)) if framework == "tf" else reloaded(ids)
    assert np.abs(_np(got.logits) - after).max() <= 1e-5
    small = model.resize_token_embeddings(50)
    assert tuple(small.weight.shape if framework == "torch" else small.embeddings.shape) == (50, 32)
    assert logits(model, ids % 50).shape == (2, 6, 50)
    with pytest.raises(ValueError, match="pad_token_id"):
        model.resize_token_embeddings(1)


def test_set_input_embeddings_keeps_the_tie():
    config = Data2VecTextConfig(**SMALL)
    _, pt, tf = _models("Data2VecTextForMaskedLM", config)
    new = torch.nn.Embedding(99, 32, padding_idx=1)
    # Seeded and at the model's init scale: unit-variance tied weights give logits of ~1e2,
    # where an absolute 1e-5 is below float32 resolution and the check would be flaky.
    with torch.no_grad():
        new.weight.copy_(torch.randn(99, 32, generator=torch.Generator().manual_seed(0)) * config.initializer_range)
    pt.set_input_embeddings(new)
    assert pt.get_input_embeddings() is new and pt.lm_head.decoder.weight is new.weight
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        pt.set_input_embeddings(torch.nn.Embedding(98, 32))
    from d2v_tf.layers import Embedding

    layer = Embedding(99, 32)
    layer.embeddings.assign(new.weight.detach().numpy())
    tf.set_input_embeddings(layer)
    assert tf.get_input_embeddings() is layer
    ids = np.array([[4, 5, 6]])
    with torch.no_grad():
        assert np.abs(pt(torch.from_numpy(ids)).logits.numpy() - np.asarray(tf(ids).logits)).max() <= 1e-5


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_bad_inputs_raise_clear_errors(framework):
    def build(arch, **extra):
        config = Data2VecTextConfig(**{**SMALL, **extra})
        return (getattr(d2v_torch, arch) if framework == "torch" else getattr(d2v_tf, "TF" + arch))(config)

    def call(model, **inputs):
        if framework == "torch":
            inputs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
            with torch.no_grad():
                return model(**inputs)
        return model(**inputs)

    ids = lambda n: np.full((1, n), 5)  # noqa: E731
    model = build("Data2VecTextModel")  # pad 1, 40 positions: 38 tokens fit
    call(model, input_ids=ids(38))
    with pytest.raises(ValueError, match="limit is 38 tokens"):
        call(model, input_ids=ids(39))
    with pytest.raises(ValueError, match="limit is 38 tokens"):
        call(model, inputs_embeds=np.zeros((1, 39, 32), np.float32))
    with pytest.raises(ValueError, match="vocab_size=99"):
        call(model, input_ids=np.array([[5, 99]]))
    with pytest.raises(ValueError, match="type_vocab_size=2"):
        call(model, input_ids=ids(3), token_type_ids=np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="not both"):
        call(model, input_ids=ids(3), inputs_embeds=np.zeros((1, 3, 32), np.float32))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        call(model, input_ids=ids(3), attention_mask=np.ones((1, 4)))
    with pytest.raises(ValueError, match="max_position_embeddings=40"):
        call(model, input_ids=ids(3), position_ids=np.array([[2, 3, 40]]))
    relative = build("Data2VecTextModel", position_embedding_type="relative_key_query")
    call(relative, input_ids=ids(40))
    with pytest.raises(ValueError, match="limit is 40 tokens"):
        call(relative, input_ids=ids(41))
    decoder = build("Data2VecTextForCausalLM", is_decoder=True)
    past = call(decoder, input_ids=ids(30), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="after 30 cached positions.*limit is 38"):
        call(decoder, input_ids=ids(9), past_key_values=past)
    with pytest.raises(ValueError, match="past_key_values need a decoder"):
        call(model, input_ids=ids(2), past_key_values=past)
    with pytest.raises(ValueError, match="labels must be in"):
        call(build("Data2VecTextForTokenClassification"), input_ids=ids(3), labels=np.array([[0, 3, -100]]))
    with pytest.raises(ValueError, match="num_labels == 2"):
        call(build("Data2VecTextForQuestionAnswering"), input_ids=ids(3))
    with pytest.raises(ValueError, match="num_choices"):
        call(build("Data2VecTextForMultipleChoice"), input_ids=ids(3))
    with pytest.raises(ValueError, match="cross-attention"):
        call(decoder, input_ids=ids(3), encoder_hidden_states=np.zeros((1, 2, 32), np.float32))


def test_pad_rows_get_no_gradient_in_both_frameworks():
    """PyTorch's padding_idx: lookups of the pad id send no gradient to its row (Keras twin too)."""
    import tensorflow as tf_

    config = Data2VecTextConfig(**SMALL, tie_word_embeddings=False)  # tied, the decoder would feed row 1
    _, pt, tf = _models("Data2VecTextForMaskedLM", config)
    ids = np.array([[4, 5, 1, 1]])
    labels = np.array([[6, 7, -100, -100]])
    pt.zero_grad()
    pt(torch.from_numpy(ids), labels=torch.from_numpy(labels)).loss.backward()
    emb = pt.data2vec_text.embeddings
    tf_emb = tf.data2vec_text.embeddings
    variables = [tf_emb.word_embeddings.embeddings, tf_emb.position_embeddings.embeddings]
    with tf_.GradientTape() as tape:
        loss = tf(ids, labels=labels, training=False).loss
    grads = [tf_.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    for torch_table, grad in zip((emb.word_embeddings, emb.position_embeddings), grads):
        want = torch_table.weight.grad.numpy()
        assert np.abs(want[1]).sum() == 0.0 and np.abs(grad[1]).sum() == 0.0
        assert np.abs(want).sum() > 0 and np.abs(grad - want).max() <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = Data2VecTextConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=True,
                                position_embedding_type="relative_key")
    model = d2v_torch.Data2VecTextForCausalLM(config).train()
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 99, (2, 7)))

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.gradient_checkpointing_enable()
    again = grads()
    assert len(plain) == len(again) > 0
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(plain, again))


# -------------------------------------------------------------------------------- Keras
@pytest.mark.parametrize("arch", ["TFData2VecTextForMaskedLM", "TFData2VecTextForMultipleChoice"])
def test_keras_file_round_trip(arch, tmp_path):
    import keras

    model = getattr(d2v_tf, arch)(Data2VecTextConfig(**SMALL, position_embedding_type="relative_key"))
    ids = np.random.default_rng(0).integers(3, 99, (2, 3, 5) if arch.endswith("Choice") else (2, 5))
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras")
    assert type(back) is type(model)
    assert np.array_equal(np.asarray(back(ids).logits), np.asarray(model(ids).logits))


TRAIN = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=20, num_labels=3)


def _text_task(head, n=32, length=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 40, (n, length))
    mask = np.ones_like(ids)
    ids[::2, -2:] = 1  # padded rows
    mask[::2, -2:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    if head == "seqcls":
        y = (ids[:, 0] % 3).astype(np.int64)
    elif head == "tokcls":
        y = np.where(mask == 1, ids % 3, -100)
    elif head == "mlm":
        y = np.full_like(ids, -100)
        chosen = rng.random(ids.shape) < 0.3
        y[chosen] = ids[chosen]
        x["input_ids"] = np.where(chosen, 39, ids)  # 39 plays <mask>
    elif head == "causal":
        y = np.where(mask == 1, ids, -100)
    elif head == "mc":
        x = {"input_ids": ids.reshape(n // 4, 4, length), "attention_mask": mask.reshape(n // 4, 4, length)}
        y = (ids.reshape(n // 4, 4, length)[:, :, 0].argmax(1)).astype(np.int64)
    else:  # qa
        y = {"start_positions": rng.integers(0, length, n), "end_positions": rng.integers(0, length, n)}
    return x, y


HEAD_CLASSES = {
    "seqcls": "TFData2VecTextForSequenceClassification",
    "tokcls": "TFData2VecTextForTokenClassification",
    "mlm": "TFData2VecTextForMaskedLM",
    "causal": "TFData2VecTextForCausalLM",
    "mc": "TFData2VecTextForMultipleChoice",
    "qa": "TFData2VecTextForQuestionAnswering",
}


@pytest.mark.parametrize("head", ["seqcls", "tokcls", "mlm"])
def test_keras_fit_lowers_loss(head):
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(d2v_tf, HEAD_CLASSES[head])(Data2VecTextConfig(**TRAIN))
    x, y = _text_task(head)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))  # no loss: the built-in one
    first = model.evaluate(x, y, batch_size=8, verbose=0)
    hist = model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert model.evaluate(x, y, batch_size=8, verbose=0) < first


@pytest.mark.parametrize("head", ["causal", "mc", "qa"])
def test_keras_fit_runs_with_the_builtin_loss(head):
    import keras

    keras.utils.set_random_seed(0)
    extra = dict(is_decoder=True) if head == "causal" else dict(num_labels=2) if head == "qa" else {}
    model = getattr(d2v_tf, HEAD_CLASSES[head])(Data2VecTextConfig(**{**TRAIN, **extra}))
    x, y = _text_task(head)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"]))
    if head == "qa":  # positions inside x: the loss comes from the call
        hist = model.fit({**x, **y}, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"][0])
        pred = model.predict(x, batch_size=8, verbose=0)
        assert pred["start_logits"].shape == (32, 8)


def test_keras_fit_with_xla():
    import keras

    keras.utils.set_random_seed(0)
    model = d2v_tf.TFData2VecTextForSequenceClassification(Data2VecTextConfig(**TRAIN))
    x, y = _text_task("seqcls")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    hist = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
