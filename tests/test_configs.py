import json
import sys

import pytest
import transformers

from d2v_common import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig, load_config
from d2v_common.configs import ACTIVATIONS

NON_DEFAULT = {
    Data2VecTextConfig: dict(
        vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=50,
        hidden_act="gelu_new", max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
        position_embedding_type="relative_key_query", classifier_dropout=0.2, is_decoder=True,
        add_cross_attention=True, problem_type="multi_label_classification", num_labels=4,
    ),
    Data2VecAudioConfig: dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=6, conv_dim=(8, 16), conv_stride=(3, 2),
        conv_kernel=(7, 3), conv_bias=True, num_conv_pos_embeddings=2, conv_pos_kernel_size=6,
        num_conv_pos_embedding_groups=3, add_adapter=True, output_hidden_size=24, num_adapter_layers=1,
        tdnn_dim=(8, 9), tdnn_kernel=(3, 1), tdnn_dilation=(2, 1), ctc_loss_reduction="mean",
        use_weighted_layer_sum=True, id2label={0: "yes", 1: "no", 2: "maybe"}, label2id={"yes": 0, "no": 1, "maybe": 2},
    ),
    Data2VecVisionConfig: dict(
        hidden_size=48, num_hidden_layers=5, num_attention_heads=6, image_size=64, patch_size=8,
        use_mask_token=True, use_relative_position_bias=True, use_shared_relative_position_bias=True,
        layer_scale_init_value=0.0, use_mean_pooling=False, out_indices=[1, 2, 3, 5], pool_scales=[1, 3],
        use_auxiliary_head=False, semantic_loss_ignore_index=-1, num_labels=7,
    ),
}


def _hf(cls):
    return getattr(transformers, cls.__name__)


@pytest.mark.parametrize("cls", list(NON_DEFAULT), ids=lambda c: c.__name__)
def test_defaults_match_hf(cls):
    ours, theirs = cls().to_dict(), _hf(cls)().to_dict()
    for key in cls.FIELDS:
        assert ours[key] == theirs[key], key
    assert ours["id2label"] == {str(k): v for k, v in theirs["id2label"].items()}
    assert cls().num_labels == 2


@pytest.mark.parametrize("cls", list(NON_DEFAULT), ids=lambda c: c.__name__)
def test_hf_file_loads_and_saves_back_unchanged(cls, tmp_path):
    hf = _hf(cls)(**NON_DEFAULT[cls], some_unknown_key={"kept": [1, 2]})
    hf.save_pretrained(tmp_path / "hf")
    ours = cls.from_pretrained(tmp_path / "hf")
    assert ours.some_unknown_key == {"kept": [1, 2]}
    assert ours.num_labels == hf.num_labels and ours.problem_type == hf.problem_type
    ours.save_pretrained(tmp_path / "d2v")
    back = _hf(cls).from_pretrained(tmp_path / "d2v")
    assert back.to_dict() == hf.to_dict()
    # and the written file is exactly what HF writes, key for key
    assert json.loads((tmp_path / "d2v" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf" / "config.json").read_text()
    )


@pytest.mark.parametrize("cls", list(NON_DEFAULT), ids=lambda c: c.__name__)
def test_d2v_config_round_trip(cls, tmp_path):
    ours = cls(**NON_DEFAULT[cls])
    ours.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path / "config.json")
    assert again == ours
    assert cls.from_dict(ours.to_dict()) == ours
    assert json.loads(ours.to_json_string())["model_type"] == cls.model_type
    assert load_config(tmp_path) == ours
    hf = _hf(cls).from_pretrained(tmp_path)
    for key in cls.FIELDS:
        assert getattr(hf, key) == getattr(ours, key), key


def test_labels_behave_as_hf():
    for kwargs in [dict(), dict(num_labels=5), dict(id2label={"0": "a", "1": "b", "2": "c"}),
                   dict(id2label={0: "a"}, label2id={"a": 0})]:
        ours, theirs = Data2VecVisionConfig(**kwargs), transformers.Data2VecVisionConfig(**kwargs)
        assert ours.num_labels == theirs.num_labels
        assert ours.id2label == theirs.id2label
        assert ours.label2id == theirs.label2id
    c = Data2VecTextConfig()
    c.num_labels = 4
    assert c.id2label == {i: f"LABEL_{i}" for i in range(4)} and c.label2id["LABEL_3"] == 3


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (Data2VecTextConfig, dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (Data2VecVisionConfig, dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (Data2VecAudioConfig, dict(conv_dim=(1, 2), conv_stride=(1,), conv_kernel=(1, 2)), "conv_stride"),
        (Data2VecAudioConfig, dict(tdnn_dim=(1, 2), tdnn_kernel=(1,)), "tdnn_kernel"),
        (Data2VecTextConfig, dict(hidden_act="not_an_activation"), "hidden_act"),
        (Data2VecAudioConfig, dict(feat_extract_activation="nope"), "feat_extract_activation"),
        (Data2VecTextConfig, dict(position_embedding_type="rotary"), "position_embedding_type"),
        (Data2VecTextConfig, dict(problem_type="ranking"), "problem_type"),
        (Data2VecAudioConfig, dict(ctc_loss_reduction="max"), "ctc_loss_reduction"),
        (Data2VecAudioConfig, dict(hidden_size=48, num_attention_heads=4, num_conv_pos_embedding_groups=5),
         "num_conv_pos_embedding_groups"),
    ],
)
def test_bad_values_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_out_indices_past_last_layer_named():
    config = Data2VecVisionConfig(num_hidden_layers=2, out_indices=[1, 2, 3, 9])
    with pytest.raises(ValueError, match="out_indices"):
        config.segmentation_feature_indices()
    # HF's own tests use [0, 1, 2, 3] with two layers: three maps, accepted
    assert Data2VecVisionConfig(num_hidden_layers=2, out_indices=[0, 1, 2, 3]).segmentation_feature_indices() == [0, 1, 2]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (Data2VecTextConfig, dict(hidden_size="768")),
        (Data2VecVisionConfig, dict(use_mask_token="yes")),
        (Data2VecAudioConfig, dict(conv_dim=[512, "a"])),
        (Data2VecVisionConfig, dict(layer_norm_eps=None)),
    ],
)
def test_wrong_types_are_type_errors(cls, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_wrong_model_type_refused(tmp_path):
    Data2VecTextConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        Data2VecVisionConfig.from_pretrained(tmp_path)


def test_activation_list_matches_hf():
    from transformers.activations import ACT2CLS

    assert set(ACTIVATIONS) <= set(ACT2CLS)


def test_import_d2v_common_needs_no_framework():
    import subprocess

    code = (
        "import sys, d2v_common, d2v_common.checkpoints.formats, d2v_common.spec.layouts, d2v_common.loader.matching\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'keras', 'transformers')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
