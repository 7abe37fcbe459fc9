"""data2vec 2.0: fairseq fixtures in both frameworks, conversion, round trips, bad checkpoints."""

from __future__ import annotations

import argparse
import fractions
import json
import os
import shutil

import numpy as np
import pytest
import torch

import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import check_case
from d2v_common import data2vec2 as D
from d2v_common.convert import main as convert_main
from d2v_common.checkpoints.fairseq import FairseqCheckpointError, convert_fairseq, convert_fairseq_to_folder
from tests.fixture_paths import DATA2VEC2_DIR as FIXTURES

CASES = [c["case"] for c in json.load(open(os.path.join(FIXTURES, "cases.json")))["cases"]]
ATOL = 1e-5


def _d2v_tf():
    import d2v_tf

    return d2v_tf


def _close(actual, expected, mask=None):
    actual, expected = np.asarray(actual, dtype=np.float32), np.asarray(expected)
    assert actual.shape == expected.shape
    if mask is not None:
        actual, expected = actual[mask], expected[mask]
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)


def _fixture(case):
    inputs = dict(np.load(os.path.join(FIXTURES, case, "inputs.npz")))
    outputs = dict(np.load(os.path.join(FIXTURES, case, "outputs.npz")))
    return inputs, outputs


def _check_outputs(case, framework, model, inputs, outputs):
    """Run the fixture inputs through ``model`` (torch or Keras) and compare with upstream."""
    to = (lambda a: torch.from_numpy(a)) if framework == "torch" else (lambda a: a)
    arr = (lambda t: t.detach().numpy()) if framework == "torch" else np.asarray
    src = inputs["source"]
    if case == "image-features":
        _close(arr(model(to(src)).last_hidden_state), outputs["x"])
    elif case == "image-cls":
        _close(arr(model(to(src)).logits), outputs["logits"])
        hidden = model.data2vec2_vision(to(src)).last_hidden_state
        _close(arr(hidden)[:, 1:], outputs["features"])
        _close(arr(model.pool(hidden)), outputs["pooled"])
    elif case.startswith("audio"):
        keep = ~inputs["padding_mask"]
        frames = outputs["padding_mask"].shape[1]
        valid = np.asarray(arr(model.frame_mask(to(keep), frames)))
        np.testing.assert_array_equal(valid, ~outputs["padding_mask"])
        out = model(to(src), attention_mask=to(keep))
        if case == "audio-features":
            _close(arr(out.last_hidden_state), outputs["x"])
        else:
            _close(arr(out.logits), outputs["logits_btc"], valid)  # fairseq sets padded frames to -inf
            _close(arr(out.logits).transpose(1, 0, 2), outputs["encoder_out"])
            _close(arr(model.data2vec2_audio(to(src), attention_mask=to(keep)).last_hidden_state), outputs["x"])
    else:
        ids, keep = src, (~inputs["padding_mask"]).astype(np.int64)
        _close(arr(model(to(ids), attention_mask=to(keep)).logits), outputs["logits"])
        _close(arr(model.data2vec2_text(to(ids)).last_hidden_state), outputs["x"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture converted once: {case: (folder, report)}."""
    root = tmp_path_factory.mktemp("d2v2")
    out = {}
    for case in CASES:
        dictionary = os.path.join(FIXTURES, case, "dict.txt")
        dictionary = dictionary if os.path.isfile(dictionary) else None
        folder = str(root / case)
        out[case] = (folder, convert_fairseq_to_folder(os.path.join(FIXTURES, case, "checkpoint.pt"), folder,
                                                       dictionary=dictionary))
    return out


@pytest.mark.parametrize("case", CASES)
def test_fixture_matches_upstream_in_both_frameworks(case, converted):
    folder, report = converted[case]
    arch = json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
    inputs, outputs = _fixture(case)
    with torch.no_grad():
        _check_outputs(case, "torch", getattr(d2v_torch, arch).from_pretrained(folder), inputs, outputs)
    _check_outputs(case, "keras", getattr(_d2v_tf(), "TF" + arch).from_pretrained(folder), inputs, outputs)


@pytest.mark.parametrize("case", ["image-features", "audio-features"])
def test_pretraining_parts_dropped_and_listed(case, converted):
    _, report = converted[case]
    assert any(name == "_ema" for name in report.dropped)
    assert any(".decoder." in name for name in report.dropped)


def test_converted_folders_round_trip_bit_exact(converted, tmp_path):
    for case in ("image-cls", "audio-ctc", "text-cls"):
        folder, report = converted[case]
        cls = getattr(d2v_torch, report.architecture)
        model = cls.from_pretrained(folder)
        reference = model.state_arrays()
        model.save_pretrained(tmp_path / case, tf_h5=True)
        back = cls.from_pretrained(tmp_path / case, checkpoint_format="tf-h5").state_arrays()
        keras_model = getattr(_d2v_tf(), "TF" + report.architecture).from_pretrained(folder)
        keras_model.save_pretrained(tmp_path / (case + "-k"))
        from_keras = cls.from_pretrained(tmp_path / (case + "-k")).state_arrays()
        for name, value in reference.items():
            assert np.array_equal(back[name], value) and back[name].dtype == value.dtype, name
            assert np.array_equal(from_keras[name], value), name


def test_from_pretrained_reads_fairseq_checkpoint_directly():
    path = os.path.join(FIXTURES, "text-cls", "checkpoint.pt")
    model = d2v_torch.Data2Vec2TextForSequenceClassification.from_pretrained(path)
    assert model.load_report.source.endswith("(fairseq)")
    inputs, outputs = _fixture("text-cls")
    with torch.no_grad():
        _check_outputs("text-cls", "torch", model, inputs, outputs)
    with pytest.raises(TypeError, match="Data2Vec2TextConfig"):
        d2v_torch.Data2Vec2AudioModel.from_pretrained(path)


def test_shared_formulas_match_upstream_tables():
    _, image = _fixture("image-features")
    np.testing.assert_allclose(D.sincos_2d_positions(32, 4)[None], image["aux_sincos_pos_embed"], atol=1e-7)
    _, audio = _fixture("audio-features")
    np.testing.assert_array_equal(D.alibi_slopes(4), audio["aux_alibi_slopes"])
    # non-power-of-two head counts interleave the next power's slopes (upstream get_slopes)
    np.testing.assert_allclose(D.alibi_slopes(6), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
    assert D.alibi_distances_2d(4)[0].tolist() == [0, -1, -1, -2]


def test_cli_converts_and_reports(tmp_path, capsys):
    ckpt = os.path.join(FIXTURES, "image-features", "checkpoint.pt")
    assert convert_main([ckpt, str(tmp_path / "out"), "--from", "fairseq", "--to", "tf-h5"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "tf_model.h5"]
    assert "dropped 7 pretraining-only tensors" in capsys.readouterr().out
    # a dictionary that does not fit the embedding is an error, and nothing is written
    bad_dict = tmp_path / "dict.txt"
    bad_dict.write_text("a 1\nb 2\n")
    text = os.path.join(FIXTURES, "text-cls", "checkpoint.pt")
    assert convert_main([text, str(tmp_path / "t"), "--from", "fairseq", "--dict", str(bad_dict)]) == 2
    assert "gives 7 symbols" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "t")
    assert [p for p in os.listdir(tmp_path) if p.startswith("t.")] == []
    # fairseq-only options are refused for the other formats; --to stays required there
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(tmp_path / "out"), str(tmp_path / "x"), "--to", "safetensors", "--dict", str(bad_dict)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path / "out"), str(tmp_path / "x")])
    assert "--to" in capsys.readouterr().err


# ------------------------------------------------------------------------- bad checkpoints


def _fake(tmp_path, name, **payload):
    path = tmp_path / name
    torch.save(payload, path)
    return str(path)


def _with_model_name(tmp_path, name):
    ckpt = torch.load(os.path.join(FIXTURES, "audio-features", "checkpoint.pt"), weights_only=True)
    ckpt["cfg"]["model"]["_name"] = name
    return _fake(tmp_path, f"{name}.pt", **ckpt)


class NotAllowed:
    pass


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: _with_model_name(t, "data2vec_audio"), "data2vec 1.0 checkpoint"),
        (lambda t: _with_model_name(t, "roberta"), "not a data2vec 2.0 model"),
        (lambda t: _fake(t, "old.pt", args=argparse.Namespace(arch="wav2vec2"), model={}), "old-style"),
        (lambda t: _fake(t, "evil.pt", cfg={"model": {"_name": "data2vec_multi"}}, model={}, extra=NotAllowed()),
         "not on d2v's allow-list"),
        (lambda t: _fake(t, "frac.pt", model={}, extra=fractions.Fraction(1, 3)), "fractions.Fraction"),
        (lambda t: _fake(t, "nomodel.pt", cfg={}), "no 'model' state dict"),
    ],
)
def test_bad_checkpoints_are_clear_errors(tmp_path, make, message):
    with pytest.raises(FairseqCheckpointError, match=message):
        convert_fairseq(make(tmp_path))


def test_truncated_and_missing_files(tmp_path):
    src = os.path.join(FIXTURES, "image-cls", "checkpoint.pt")
    data = open(src, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FairseqCheckpointError, match="truncated or corrupt"):
        convert_fairseq(str(tmp_path / "cut.pt"))
    with pytest.raises(FileNotFoundError):
        convert_fairseq(str(tmp_path / "missing.pt"))


def test_unknown_tensor_and_learned_alibi_refused(tmp_path):
    ckpt = torch.load(os.path.join(FIXTURES, "image-cls", "checkpoint.pt"), weights_only=True)
    ckpt["model"]["model.blocks.0.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(FairseqCheckpointError, match="does not know how to map"):
        convert_fairseq(_fake(tmp_path, "extra.pt", **ckpt))
    ckpt = torch.load(os.path.join(FIXTURES, "audio-features", "checkpoint.pt"), weights_only=True)
    ckpt["cfg"]["model"]["modalities"]["audio"]["learned_alibi"] = True
    with pytest.raises(FairseqCheckpointError, match="learned_alibi"):
        convert_fairseq(_fake(tmp_path, "learned.pt", **ckpt))


def test_pickled_fairseq_enums_read_without_fairseq(tmp_path, monkeypatch):
    """Released checkpoints keep Modality / PredictionMode enum members in their config."""
    import enum
    import sys
    import types

    modality = types.ModuleType("examples.data2vec.data.modality")
    modality.Modality = enum.Enum("Modality", ["AUDIO", "IMAGE", "TEXT"], module=modality.__name__)
    mae = types.ModuleType("examples.data2vec.models.mae_image_classification")
    mae.PredictionMode = enum.Enum("PredictionMode", ["MEAN_POOLING", "CLS_TOKEN", "LIN_SOFTMAX"], module=mae.__name__)
    for module in (modality, mae):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    ckpt = torch.load(os.path.join(FIXTURES, "image-cls", "checkpoint.pt"), weights_only=True)
    ckpt["cfg"]["model"]["prediction_mode"] = mae.PredictionMode.CLS_TOKEN
    ckpt["cfg"]["model"]["pretrained_model_args"]["model"]["supported_modality"] = modality.Modality.IMAGE
    config, arch, _, _ = convert_fairseq(_fake(tmp_path, "enums.pt", **ckpt))
    assert arch == "Data2Vec2VisionForImageClassification" and config.pooling_mode == "cls"


def test_widths_missing_from_old_configs_come_from_the_weights(tmp_path):
    ckpt = torch.load(os.path.join(FIXTURES, "image-cls", "checkpoint.pt"), weights_only=True)
    pre = ckpt["cfg"]["model"]["pretrained_model_args"]["model"]
    del pre["modalities"]["image"]["embed_dim"]  # upstream default 768 would not fit the weights
    pre["mlp_ratio"] = 3.0
    config, _, _, report = convert_fairseq(_fake(tmp_path, "old_cfg.pt", **ckpt))
    assert config.patch_embed_dim is None and config.intermediate_size == 128
    assert any("patch_embed_dim taken from the weights" in n for n in report.notes)


def test_unknown_config_keys_are_noted(tmp_path):
    ckpt = torch.load(os.path.join(FIXTURES, "audio-features", "checkpoint.pt"), weights_only=True)
    ckpt["cfg"]["model"]["my_private_flag"] = 3
    _, _, _, report = convert_fairseq(_fake(tmp_path, "k.pt", **ckpt))
    assert any("model.my_private_flag" in n for n in report.notes)


# ------------------------------------------------------------------------------ crosscheck

# the head classes run their base model too; `python -m crosscheck --family data2vec2` runs all 18
D2V2_CASES = [c for c in all_cases("small", ["data2vec2"]) if "-model-" not in c.name or "groupnorm" in c.name]


@pytest.mark.parametrize("case", D2V2_CASES, ids=[c.name for c in D2V2_CASES])
def test_crosscheck_case(case):
    # one round trip here keeps the file fast (the fixture test covers one per family); the CLI runs all
    row = check_case(case, seed=0, with_round_trips=case.name == "data2vec2-audio-model-groupnorm")
    assert row.ok, (row.error, row.diffs, row.round_trip)


def test_configs_round_trip_and_validate(tmp_path):
    config = D.Data2Vec2AudioConfig(conv_dim=[8], conv_kernel=[4], conv_stride=[2], hidden_size=8,
                                    num_attention_heads=2, num_conv_pos_embedding_groups=2)
    config.save_pretrained(tmp_path)
    from d2v_common import load_config

    assert load_config(tmp_path) == config
    with pytest.raises(ValueError, match="num_alibi_heads"):
        D.Data2Vec2TextConfig(num_alibi_heads=20)
    with pytest.raises(ValueError, match="pooling_mode"):
        D.Data2Vec2VisionConfig(pooling_mode="max")
    shutil.rmtree(tmp_path)


def test_audio_extra_tokens_dropped_and_blank_weight(tmp_path):
    """fairseq's extract_features drops audio / text extra tokens; Wav2VecCtc biases the blank."""
    config = D.Data2Vec2AudioConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=[16],
        conv_kernel=[10], conv_stride=[5], num_conv_pos_embeddings=1, conv_pos_kernel_size=3,
        num_conv_pos_embedding_groups=2, num_extra_tokens=2, vocab_size=6, blank_weight=1.5,
    )
    torch.manual_seed(0)
    model = d2v_torch.Data2Vec2AudioForCTC(config).eval()
    x = torch.randn(1, 100)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        hidden = model.data2vec2_audio(x).last_hidden_state
        raw = model.lm_head(hidden)
    assert hidden.shape == (1, 19, 16) and out.hidden_states[-1].shape == (1, 19, 16)
    np.testing.assert_allclose(out.logits[..., 0], raw[..., 0] + 1.5, atol=1e-6)
    np.testing.assert_array_equal(out.logits[..., 1:], raw[..., 1:])
    set_mode = d2v_torch.Data2Vec2AudioForCTC(config.copy(blank_mode="set")).eval()
    set_mode.load_arrays(model.state_arrays())
    with torch.no_grad():
        assert torch.all(set_mode(x).logits[..., 0] == 1.5)
    keras_model = _d2v_tf().TFData2Vec2AudioForCTC(config)
    keras_model.load_arrays(model.state_arrays())
    np.testing.assert_allclose(np.asarray(keras_model(x.numpy()).logits), out.logits.numpy(), atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    config = D.Data2Vec2TextConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=16, max_position_embeddings=16, num_prenet_layers=1)
    torch.manual_seed(0)
    model = d2v_torch.Data2Vec2TextForSequenceClassification(config).train()
    ids, labels = torch.tensor([[0, 5, 6, 2, 1]]), torch.tensor([1])

    def grads():
        model.zero_grad()
        model(ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.data2vec2_text.encoder.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6)


def _block_tensors(prefix, d, hidden):
    shapes = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
              "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
              "mlp.fc1.weight": (hidden, d), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (d, hidden),
              "mlp.fc2.bias": (d,)}
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def test_group_norm_and_pre_ln_audio_names_map(tmp_path):
    """A pretraining checkpoint laid out as upstream's modules name it for extractor_mode
    'default', conv_pos_pre_ln, prenet blocks, an extra token and per-layer ALiBi scales."""
    ckpt = torch.load(os.path.join(FIXTURES, "audio-features", "checkpoint.pt"), weights_only=True)
    audio = ckpt["cfg"]["model"]["modalities"]["audio"]
    audio.update(extractor_mode="default", conv_pos_pre_ln=True, prenet_depth=1, num_extra_tokens=1,
                 learned_alibi_scale_per_layer=True)
    d, hidden, m = 32, 128, "modality_encoders.AUDIO."
    shapes = {m + "alibi_scale": (3, 1, 4, 1, 1), m + "extra_tokens": (1, 1, d),
              m + "local_encoder.conv_layers.0.0.weight": (32, 1, 10),
              m + "local_encoder.conv_layers.0.2.weight": (32,), m + "local_encoder.conv_layers.0.2.bias": (32,),
              m + "local_encoder.conv_layers.1.0.weight": (32, 32, 3),
              m + "local_encoder.conv_layers.2.0.weight": (32, 32, 3),
              m + "project_features.1.weight": (32,), m + "project_features.1.bias": (32,),
              m + "project_features.2.weight": (d, 32), m + "project_features.2.bias": (d,),
              m + "relative_positional_encoder.0.weight": (d,), m + "relative_positional_encoder.0.bias": (d,),
              m + "context_encoder.norm.weight": (d,), m + "context_encoder.norm.bias": (d,),
              m + "decoder.proj.weight": (d, 16), "_ema": None}
    for i in (1, 2):
        shapes[m + f"relative_positional_encoder.1.{i}.0.weight"] = (d, 8, 4)
        shapes[m + f"relative_positional_encoder.1.{i}.0.bias"] = (d,)
    shapes.update(_block_tensors(m + "context_encoder.blocks.0", d, hidden))
    for i in (0, 1):
        shapes.update(_block_tensors(f"blocks.{i}", d, hidden))
    rng = np.random.default_rng(0)
    ckpt["model"] = {k: ({} if v is None else torch.from_numpy((0.1 * rng.standard_normal(v)).astype(np.float32)))
                     for k, v in shapes.items()}
    config, arch, arrays, report = convert_fairseq(_fake(tmp_path, "gn.pt", **ckpt))
    assert arch == "Data2Vec2AudioModel" and config.feat_extract_norm == "group" and config.conv_pos_pre_layer_norm
    assert sorted(report.dropped) == ["_ema", m + "decoder.proj.weight"]
    pairs = {
        m + "local_encoder.conv_layers.0.2.weight": "feature_extractor.conv_layers.0.layer_norm.weight",
        m + "relative_positional_encoder.0.bias": "encoder.pos_conv_layer_norm.bias",
        m + "relative_positional_encoder.1.2.0.weight": "encoder.pos_conv_embed.layers.1.conv.weight",
        m + "context_encoder.blocks.0.attn.qkv.weight": "encoder.prenet_layers.0.attention.qkv_proj.weight",
        "blocks.1.norm2.bias": "encoder.layers.1.final_layer_norm.bias",
        m + "alibi_scale": "encoder.alibi_scale",
    }
    for old, new in pairs.items():
        np.testing.assert_array_equal(arrays[new], ckpt["model"][old].numpy())
    model = d2v_torch.Data2Vec2AudioModel(config).eval()  # the pretraining config has dropout
    model.load_arrays(arrays)
    keras_model = _d2v_tf().TFData2Vec2AudioModel(config)
    keras_model.load_arrays(arrays)
    x = np.random.default_rng(1).standard_normal((1, 800)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).last_hidden_state.numpy()
    assert expected.shape == (1, 39, 32)  # the extra token is dropped, as extract_features does
    np.testing.assert_allclose(np.asarray(keras_model(x).last_hidden_state), expected, atol=1e-5)


def _tiny(kind):
    common = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    if kind == "vision":
        return "Data2Vec2VisionModel", D.Data2Vec2VisionConfig(**common, image_size=16, patch_size=8)
    if kind == "audio":
        return "Data2Vec2AudioModel", D.Data2Vec2AudioConfig(
            **common, conv_dim=[16], conv_kernel=[10], conv_stride=[5], num_conv_pos_embeddings=1,
            conv_pos_kernel_size=3, num_conv_pos_embedding_groups=2)
    return "Data2Vec2TextModel", D.Data2Vec2TextConfig(**common, vocab_size=20, max_position_embeddings=8)


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize(
    "kind, inputs, error, message",
    [
        ("vision", {"pixel_values": np.zeros((1, 3, 24, 24), np.float32)}, ValueError, "image_size=16"),
        ("audio", {"input_values": np.zeros((1, 5), np.float32)}, ValueError, "needs at least 10"),
        ("audio", {"input_values": np.zeros((1, 50), np.int64)}, TypeError, "input_values must be floating point"),
        ("audio", {"input_values": np.zeros((1, 50), np.float32), "attention_mask": np.ones((1, 40), np.int64)},
         ValueError, "attention_mask must have the shape"),
        ("text", {"input_ids": np.array([[0, 25, 2]])}, ValueError, "vocab_size=20"),
        ("text", {"input_ids": np.zeros((1, 9), np.int64)}, ValueError, "max_position_embeddings is 8"),
    ],
)
def test_bad_model_inputs_are_named(framework, kind, inputs, error, message):
    arch, config = _tiny(kind)
    if framework == "torch":
        model = getattr(d2v_torch, arch)(config).eval()
        inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    else:
        model = getattr(_d2v_tf(), "TF" + arch)(config)
    with pytest.raises(error, match=message):
        model(**inputs)
