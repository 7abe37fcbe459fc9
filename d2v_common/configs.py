"""The three Data2Vec configurations, read from and written to HF-format ``config.json``.

A config holds three kinds of keys:

* the family's own fields (``FIELDS``), with the defaults of the HF docs, always written;
* the generic keys every HF config has (``COMMON_FIELDS``), written only when they differ
  from HF's generic defaults, as HF does;
* any other key found in a loaded file or set later (``config.my_key = 1``), kept verbatim so
  it survives a load/save round trip.

Keyword overrides (``from_pretrained(path, num_labels=5)``, ``from_dict(d, **kw)``, ``copy``)
win over the file; ``num_labels=N`` alone rebuilds ``id2label`` / ``label2id`` for N labels.

Every size a config implies is bounded (``LIMITS`` of each class, listed in its docstring):
the bounds sit far above every released checkpoint and keep an edited ``config.json`` from
asking for terabytes before any weight is read.
"""

from __future__ import annotations

import copy
import json
import math
import os
import textwrap
import warnings
from typing import Any

from d2v_common.checkpoints.hub import pop_hub_options, resolve_pretrained
from d2v_common.io_utils import atomic_write_bytes, read_json_object

CONFIG_NAME = "config.json"

# Activation names accepted in ``hidden_act`` / ``feat_extract_activation``. Both model packages
# implement exactly this set (the parameter-free activations that HF understands).
ACTIVATIONS = (
    "gelu",
    "gelu_python",
    "gelu_10",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "gelu_python_tanh",
    "gelu_accurate",
    "quick_gelu",
    "laplace",
    "leaky_relu",
    "linear",
    "mish",
    "relu",
    "relu2",
    "relu6",
    "sigmoid",
    "silu",
    "swish",
    "tanh",
)

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class Field:
    """A config field: its default and the JSON types it accepts (used to reject bad files)."""

    def __init__(self, default: Any, kind: str):
        self.default = default
        self.kind = kind  # int, float, bool, str, ints, floats, int?, float?, str?, int|ints, any


def _type_error(cls_name: str, key: str, kind: str, value: Any) -> TypeError:
    return TypeError(f"{cls_name}.{key} must be {kind.replace('?', ' or null')}, got {value!r}")


def _check_finite(cls_name: str, key: str, values) -> None:
    """NaN or infinity in a float field (a ``NaN`` in config.json) would make every output NaN."""
    bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"{cls_name}.{key} must be a finite number, got {bad[0]!r}")


def _check_kind(cls_name: str, key: str, kind: str, value: Any) -> Any:
    """Validate ``value`` against ``kind``; returns the value normalised (tuples -> lists)."""
    if kind == "any":
        return value
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise _type_error(cls_name, key, kind, value)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_float(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if base == "int" and is_int(value):
        return value
    if base == "float" and is_float(value):
        _check_finite(cls_name, key, [value])
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base in ("ints", "floats") and isinstance(value, (list, tuple)):
        check = is_int if base == "ints" else is_float
        if all(check(v) for v in value):
            if base == "floats":
                _check_finite(cls_name, key, value)
            return list(value)
    if base == "int|ints":
        if is_int(value):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) for v in value):
            return list(value)
    raise _type_error(cls_name, key, kind, value)


# Generic HF config keys and HF's defaults for them. HF writes one of these only when its value
# differs from this default (or from the family default, for the token ids).
COMMON_FIELDS: dict[str, Field] = {
    "return_dict": Field(True, "bool"),
    "output_hidden_states": Field(False, "bool"),
    "output_attentions": Field(False, "bool"),
    "torchscript": Field(False, "bool"),
    "dtype": Field(None, "str?"),
    "pruned_heads": Field({}, "any"),
    "tie_word_embeddings": Field(True, "bool"),
    "chunk_size_feed_forward": Field(0, "int"),
    "is_encoder_decoder": Field(False, "bool"),
    "is_decoder": Field(False, "bool"),
    "cross_attention_hidden_size": Field(None, "int?"),
    "add_cross_attention": Field(False, "bool"),
    "tie_encoder_decoder": Field(False, "bool"),
    "architectures": Field(None, "any"),
    "finetuning_task": Field(None, "str?"),
    "task_specific_params": Field(None, "any"),
    "problem_type": Field(None, "str?"),
    "tokenizer_class": Field(None, "str?"),
    "prefix": Field(None, "str?"),
    "bos_token_id": Field(None, "int?"),
    "pad_token_id": Field(None, "int?"),
    "eos_token_id": Field(None, "any"),
    "sep_token_id": Field(None, "int?"),
    "decoder_start_token_id": Field(None, "int?"),
}

_LABEL_KEYS = ("id2label", "label2id", "num_labels")


# Largest label count accepted (ImageNet-22k has 21841 classes): num_labels builds a dict.
MAX_NUM_LABELS = 1_000_000


def _check_num_labels(cls_name: str, n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{cls_name}.num_labels must be a non-negative int, got {n!r}")
    if n > MAX_NUM_LABELS:
        raise ValueError(f"{cls_name}.num_labels = {n} is beyond the supported maximum {MAX_NUM_LABELS}")


def _default_id2label(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}


# Longest list field accepted (conv_dim, tdnn_dim, out_indices, pool_scales ...).
MAX_LIST_LENGTH = 64


def _limits_doc(limits: dict[str, int]) -> str:
    items = ", ".join(f"{k} <= {v:_}" for k, v in limits.items())
    text = (
        "Limits (``LIMITS``; a larger value raises ``ValueError`` naming the field; far above every "
        f"released checkpoint): {items}; list fields hold at most {MAX_LIST_LENGTH} values; "
        f"num_labels <= {MAX_NUM_LABELS:_}."
    )
    return "\n\n" + textwrap.fill(text, 96, initial_indent="    ", subsequent_indent="    ") + "\n"


class Data2VecConfigBase:
    """Behaviour shared by the three configs; subclasses declare ``model_type``, ``FIELDS``
    and ``LIMITS`` (the largest value of each size field, per value for list fields)."""

    model_type: str = ""
    FIELDS: dict[str, Field] = {}
    LIMITS: dict[str, int] = {
        "hidden_size": 32768,
        "num_hidden_layers": 512,
        "num_attention_heads": 1024,
        "intermediate_size": 131072,
    }

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.__doc__ = (cls.__doc__ or "").rstrip() + _limits_doc(cls.LIMITS)

    def __init__(self, **kwargs: Any):
        name = type(self).__name__
        kwargs = dict(kwargs)
        # torch_dtype is HF's older spelling of dtype.
        if "torch_dtype" in kwargs and "dtype" not in kwargs:
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        model_type = kwargs.pop("model_type", None)
        if model_type is not None and model_type != self.model_type:
            raise ValueError(
                f"{name} expects model_type {self.model_type!r}, but the config says {model_type!r}"
            )
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)

        for key, field in {**COMMON_FIELDS, **self.FIELDS}.items():
            value = kwargs.pop(key, copy.deepcopy(field.default))
            setattr(self, key, _check_kind(name, key, field.kind, value))
        for key, value in kwargs.items():
            # an unknown key may not shadow a method or property of the config class
            if key.startswith("__") or hasattr(type(self), key):
                raise ValueError(f"{name}: config key {key!r} is reserved and cannot be set")
            setattr(self, key, value)

        if id2label is not None and not isinstance(id2label, dict):
            raise TypeError(f"{name}.id2label must be a dict, got {type(id2label).__name__}")
        if num_labels is not None and id2label is not None and len(id2label) != num_labels:
            warnings.warn(
                f"{name}: num_labels={num_labels} disagrees with the {len(id2label)} entries of id2label; "
                "id2label is kept (pass only one of them)",
                stacklevel=2,
            )
        if label2id is not None and not isinstance(label2id, dict):
            raise TypeError(f"{name}.label2id must be a dict, got {type(label2id).__name__}")
        if id2label is None:
            n = 2 if num_labels is None else num_labels
            _check_num_labels(name, n)
            self.id2label = _default_id2label(n)
            self.label2id = {v: k for k, v in self.id2label.items()} if label2id is None else label2id
        else:
            try:
                self.id2label = {int(k): v for k, v in id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"{name}.id2label keys must be integers, got {list(id2label)}") from None
            self.label2id = label2id
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"{name}.problem_type must be one of {PROBLEM_TYPES} or None, got {self.problem_type!r}"
            )
        self.validate()

    # ----------------------------------------------------------------------------- labels
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        _check_num_labels(type(self).__name__, n)
        if n != self.num_labels:
            self.id2label = _default_id2label(n)
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict and not self.torchscript

    # ------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for values no model can be built from."""
        name = type(self).__name__
        self._check_limits()
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for key in ("hidden_act", "feat_extract_activation"):
            if key in self.FIELDS and getattr(self, key) not in ACTIVATIONS:
                raise ValueError(
                    f"{name}.{key}: unknown activation {getattr(self, key)!r}; known: {', '.join(ACTIVATIONS)}"
                )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"{name}.layer_norm_eps must be positive, got {self.layer_norm_eps}")

    def _check_limits(self) -> None:
        """Sizes beyond ``LIMITS`` (and over-long lists) are refused before anything is built."""
        name = type(self).__name__
        for key, field in self.FIELDS.items():
            value = getattr(self, key)
            if isinstance(value, list) and len(value) > MAX_LIST_LENGTH:
                raise ValueError(f"{name}.{key} holds {len(value)} values; at most {MAX_LIST_LENGTH} are supported")
        for key, limit in self.LIMITS.items():
            value = getattr(self, key)
            values = value if isinstance(value, list) else [value]
            if any(v is not None and v > limit for v in values):
                raise ValueError(
                    f"{name}.{key} = {value} is beyond the supported maximum {limit:_} "
                    f"(see {name}.LIMITS); is this config.json meant for this checkpoint?"
                )

    def _check_probability(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{type(self).__name__}.{key} must be in [0, 1], got {value}")

    # ---------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every key: generic, labels, family fields, extra keys, then ``model_type``."""
        out: dict[str, Any] = {}
        for key in COMMON_FIELDS:
            out[key] = copy.deepcopy(getattr(self, key))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = copy.deepcopy(self.label2id)
        for key in self.FIELDS:
            out[key] = copy.deepcopy(getattr(self, key))
        for key, value in vars(self).items():  # extra keys, from the file or set later
            if not key.startswith("_") and key not in out and key not in COMMON_FIELDS:
                out[key] = copy.deepcopy(value)
        out["model_type"] = self.model_type
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: generic keys only where they differ from HF's defaults."""
        full = self.to_dict()
        out: dict[str, Any] = {}
        for key, value in full.items():
            if key in COMMON_FIELDS and key not in self.FIELDS and value == COMMON_FIELDS[key].default:
                continue
            if key in ("id2label", "label2id") and self._labels_are_default():
                continue
            out[key] = value
        return dict(sorted(out.items()))

    def _labels_are_default(self) -> bool:
        default = _default_id2label(2)
        return self.id2label == default and self.label2id == {v: k for k, v in default.items()}

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``config.json`` into ``save_directory`` atomically; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        atomic_write_bytes(path, self.to_json_string().encode("utf-8"))
        return path

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """A config from ``config_dict`` with ``kwargs`` overriding its keys.

        ``num_labels`` in ``kwargs`` wins over the dict's label maps: without an ``id2label``
        next to it, ``id2label`` / ``label2id`` are rebuilt for that many labels (``LABEL_i``).
        """
        if not isinstance(config_dict, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(config_dict).__name__}")
        merged = {**config_dict, **kwargs}
        merged.pop("_name_or_path", None)
        if kwargs.get("num_labels") is not None:
            num_labels = kwargs["num_labels"]
            if "id2label" in kwargs:
                if kwargs["id2label"] is not None and len(kwargs["id2label"]) != num_labels:
                    raise ValueError(
                        f"{cls.__name__}: num_labels={num_labels} disagrees with the {len(kwargs['id2label'])} "
                        "entries of id2label; pass only one of them"
                    )
            elif len(config_dict.get("id2label") or {}) != num_labels:
                merged.pop("id2label", None)  # rebuilt for num_labels labels
                if "label2id" not in kwargs:
                    merged.pop("label2id", None)
        return cls(**merged)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls.from_dict(read_json_object(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any):
        """Load from a checkpoint directory, a ``config.json`` path or a Hugging Face Hub id
        (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` as in
        HF); other kwargs override keys."""
        config = cls.from_json_file(config_json_path(path, pop_hub_options(kwargs)))
        if kwargs:
            config = cls.from_dict(config.to_dict(), **kwargs)
        return config

    def copy(self, **changes: Any):
        """A new config with ``changes`` applied (validated like a fresh one)."""
        return type(self).from_dict(self.to_dict(), **changes)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


# The encoder sizes every family shares, with HF's defaults (a base-size model).
_ENCODER_SIZE_FIELDS = {
        "hidden_size": Field(768, "int"),
        "num_hidden_layers": Field(12, "int"),
        "num_attention_heads": Field(12, "int"),
        "intermediate_size": Field(3072, "int"),
        "hidden_act": Field("gelu", "str"),
}


class Data2VecTextConfig(Data2VecConfigBase):
    """Configuration of the RoBERTa-shaped Data2Vec text models (HF's fields and defaults)."""

    model_type = "data2vec-text"
    LIMITS = {
        **Data2VecConfigBase.LIMITS,
        "vocab_size": 2_000_000,
        "max_position_embeddings": 131072,
        "type_vocab_size": 1024,
    }
    FIELDS = {
        "vocab_size": Field(30522, "int"),
        **_ENCODER_SIZE_FIELDS,
        "hidden_dropout_prob": Field(0.1, "float"),
        "attention_probs_dropout_prob": Field(0.1, "float"),
        "max_position_embeddings": Field(512, "int"),
        "type_vocab_size": Field(2, "int"),
        "initializer_range": Field(0.02, "float"),
        "layer_norm_eps": Field(1e-12, "float"),
        "pad_token_id": Field(1, "int?"),
        "bos_token_id": Field(0, "int?"),
        "eos_token_id": Field(2, "any"),
        "position_embedding_type": Field("absolute", "str"),
        "use_cache": Field(True, "bool"),
        "classifier_dropout": Field(None, "float?"),
    }
    POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.position_embedding_type not in self.POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"{name}.position_embedding_type must be one of {self.POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        for key in ("vocab_size", "max_position_embeddings"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        if self.type_vocab_size < 0:
            raise ValueError(f"{name}.type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"{name}.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})"
            )
        if self.pad_token_id is not None and self.pad_token_id + 1 >= self.max_position_embeddings:
            raise ValueError(
                f"{name}.max_position_embeddings ({self.max_position_embeddings}) leaves no positions "
                f"after pad_token_id ({self.pad_token_id}): position ids start at pad_token_id + 1"
            )
        self._check_probability("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

    @property
    def max_sequence_length(self) -> int:
        """Longest input the absolute position table allows (positions start after the pad id)."""
        offset = self.pad_token_id if self.pad_token_id is not None else 0
        return self.max_position_embeddings - offset - 1


class Data2VecAudioConfig(Data2VecConfigBase):
    """Configuration of the wav2vec2-shaped Data2Vec audio models (HF's fields and defaults)."""

    model_type = "data2vec-audio"
    LIMITS = {
        **Data2VecConfigBase.LIMITS,
        "vocab_size": 2_000_000,
        "conv_dim": 32768,
        "conv_kernel": 4096,
        "conv_stride": 4096,
        "conv_pos_kernel_size": 4096,
        "num_conv_pos_embeddings": 64,
        "num_conv_pos_embedding_groups": 32768,
        "tdnn_dim": 32768,
        "tdnn_kernel": 4096,
        "tdnn_dilation": 4096,
        "xvector_output_dim": 32768,
        "classifier_proj_size": 32768,
        "output_hidden_size": 32768,
        "num_adapter_layers": 64,
        "adapter_kernel_size": 4096,
        "adapter_stride": 4096,
    }
    FIELDS = {
        "vocab_size": Field(32, "int"),
        **_ENCODER_SIZE_FIELDS,
        "hidden_dropout": Field(0.1, "float"),
        "activation_dropout": Field(0.1, "float"),
        "attention_dropout": Field(0.1, "float"),
        "feat_proj_dropout": Field(0.0, "float"),
        "final_dropout": Field(0.1, "float"),
        "layerdrop": Field(0.1, "float"),
        "initializer_range": Field(0.02, "float"),
        "layer_norm_eps": Field(1e-5, "float"),
        "feat_extract_activation": Field("gelu", "str"),
        "conv_dim": Field([512, 512, 512, 512, 512, 512, 512], "ints"),
        "conv_stride": Field([5, 2, 2, 2, 2, 2, 2], "ints"),
        "conv_kernel": Field([10, 3, 3, 3, 3, 2, 2], "ints"),
        "conv_bias": Field(False, "bool"),
        "num_conv_pos_embedding_groups": Field(16, "int"),
        "conv_pos_kernel_size": Field(19, "int"),
        "num_conv_pos_embeddings": Field(5, "int"),
        "mask_time_prob": Field(0.05, "float"),
        "mask_time_length": Field(10, "int"),
        "mask_time_min_masks": Field(2, "int"),
        "mask_feature_prob": Field(0.0, "float"),
        "mask_feature_length": Field(10, "int"),
        "mask_feature_min_masks": Field(0, "int"),
        "ctc_loss_reduction": Field("sum", "str"),
        "ctc_zero_infinity": Field(False, "bool"),
        "use_weighted_layer_sum": Field(False, "bool"),
        "classifier_proj_size": Field(256, "int"),
        "tdnn_dim": Field([512, 512, 512, 512, 1500], "ints"),
        "tdnn_kernel": Field([5, 3, 3, 1, 1], "ints"),
        "tdnn_dilation": Field([1, 2, 3, 1, 1], "ints"),
        "xvector_output_dim": Field(512, "int"),
        "pad_token_id": Field(0, "int?"),
        "bos_token_id": Field(1, "int?"),
        "eos_token_id": Field(2, "any"),
        "add_adapter": Field(False, "bool"),
        "adapter_kernel_size": Field(3, "int"),
        "adapter_stride": Field(2, "int"),
        "num_adapter_layers": Field(3, "int"),
        "output_hidden_size": Field(None, "int?"),
        # Derived by HF from conv_dim; kept so HF's files round-trip unchanged.
        "num_feat_extract_layers": Field(None, "int?"),
    }
    CTC_REDUCTIONS = ("sum", "mean")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # HF stores these derived values: output_hidden_size falls back to hidden_size and
        # num_feat_extract_layers always equals len(conv_dim).
        if self.output_hidden_size is None:
            self.output_hidden_size = self.hidden_size
        self.num_feat_extract_layers = len(self.conv_dim)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        lengths = {k: len(getattr(self, k)) for k in ("conv_dim", "conv_stride", "conv_kernel")}
        if len(set(lengths.values())) != 1 or lengths["conv_dim"] == 0:
            raise ValueError(
                f"{name}: conv_dim, conv_stride and conv_kernel must be non-empty and of one length, got "
                + ", ".join(f"len({k})={v}" for k, v in lengths.items())
            )
        tdnn = {k: len(getattr(self, k)) for k in ("tdnn_dim", "tdnn_kernel", "tdnn_dilation")}
        if len(set(tdnn.values())) != 1 or tdnn["tdnn_dim"] == 0:
            raise ValueError(
                f"{name}: tdnn_dim, tdnn_kernel and tdnn_dilation must be non-empty and of one length, got "
                + ", ".join(f"len({k})={v}" for k, v in tdnn.items())
            )
        for key in ("conv_dim", "conv_stride", "conv_kernel", "tdnn_dim", "tdnn_kernel", "tdnn_dilation"):
            if any(v <= 0 for v in getattr(self, key)):
                raise ValueError(f"{name}.{key} values must be positive, got {getattr(self, key)}")
        for key in (
            "conv_pos_kernel_size",
            "num_conv_pos_embedding_groups",
            "adapter_kernel_size",
            "adapter_stride",
            "classifier_proj_size",
            "xvector_output_dim",
            "vocab_size",
        ):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        for key in ("num_conv_pos_embeddings", "num_adapter_layers", "mask_time_length", "mask_feature_length"):
            if getattr(self, key) < 0:
                raise ValueError(f"{name}.{key} must be >= 0, got {getattr(self, key)}")
        if self.hidden_size % self.num_conv_pos_embedding_groups != 0:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})"
            )
        if self.ctc_loss_reduction not in self.CTC_REDUCTIONS:
            raise ValueError(
                f"{name}.ctc_loss_reduction must be one of {self.CTC_REDUCTIONS}, got {self.ctc_loss_reduction!r}"
            )
        if self.output_hidden_size is not None and self.output_hidden_size <= 0:
            raise ValueError(f"{name}.output_hidden_size must be positive, got {self.output_hidden_size}")
        self._check_probability(
            "hidden_dropout",
            "activation_dropout",
            "attention_dropout",
            "feat_proj_dropout",
            "final_dropout",
            "layerdrop",
            "mask_time_prob",
            "mask_feature_prob",
        )

    @property
    def inputs_to_logits_ratio(self) -> int:
        ratio = 1
        for s in self.conv_stride:
            ratio *= s
        return ratio


class Data2VecVisionConfig(Data2VecConfigBase):
    """Configuration of the BEiT-shaped Data2Vec vision models (HF's fields and defaults).

    Besides ``LIMITS``, an image may hold at most ``MAX_PATCHES`` patches (the relative
    position index grows with its square).
    """

    model_type = "data2vec-vision"
    MAX_PATCHES = 4096
    LIMITS = {
        **Data2VecConfigBase.LIMITS,
        "image_size": 16384,
        "patch_size": 16384,
        "num_channels": 1024,
        "auxiliary_channels": 32768,
        "auxiliary_num_convs": 64,
        "pool_scales": 1024,
    }
    FIELDS = {
        **_ENCODER_SIZE_FIELDS,
        "hidden_dropout_prob": Field(0.0, "float"),
        "attention_probs_dropout_prob": Field(0.0, "float"),
        "initializer_range": Field(0.02, "float"),
        "layer_norm_eps": Field(1e-12, "float"),
        "image_size": Field(224, "int|ints"),
        "patch_size": Field(16, "int|ints"),
        "num_channels": Field(3, "int"),
        "use_mask_token": Field(False, "bool"),
        "use_absolute_position_embeddings": Field(False, "bool"),
        "use_relative_position_bias": Field(False, "bool"),
        "use_shared_relative_position_bias": Field(False, "bool"),
        "layer_scale_init_value": Field(0.1, "float"),
        "drop_path_rate": Field(0.1, "float"),
        "use_mean_pooling": Field(True, "bool"),
        "out_indices": Field([3, 5, 7, 11], "ints"),
        "pool_scales": Field([1, 2, 3, 6], "ints"),
        "use_auxiliary_head": Field(True, "bool"),
        "auxiliary_loss_weight": Field(0.4, "float"),
        "auxiliary_channels": Field(256, "int"),
        "auxiliary_num_convs": Field(1, "int"),
        "auxiliary_concat_input": Field(False, "bool"),
        "semantic_loss_ignore_index": Field(255, "int"),
    }

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for key in ("image_size", "patch_size"):
            value = getattr(self, key)
            values = value if isinstance(value, list) else [value]
            if any(v <= 0 for v in values):
                raise ValueError(f"{name}.{key} must be positive, got {value}")
        if any(i < p for i, p in zip(self.image_size_hw, self.patch_size_hw)):
            raise ValueError(f"{name}.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        patches = self.patch_grid[0] * self.patch_grid[1]
        if patches > self.MAX_PATCHES:
            raise ValueError(
                f"{name}.image_size {self.image_size} with patch_size {self.patch_size} gives {patches} patches; "
                f"at most {self.MAX_PATCHES} are supported (Data2VecVisionConfig.MAX_PATCHES)"
            )
        if self.num_channels <= 0:
            raise ValueError(f"{name}.num_channels must be positive, got {self.num_channels}")
        if not self.pool_scales or any(s <= 0 for s in self.pool_scales):
            raise ValueError(f"{name}.pool_scales must be positive integers, got {self.pool_scales}")
        if any(i < 0 for i in self.out_indices):
            raise ValueError(f"{name}.out_indices must be >= 0, got {self.out_indices}")
        if self.auxiliary_channels <= 0 or self.auxiliary_num_convs < 0:
            raise ValueError(
                f"{name}: auxiliary_channels must be positive and auxiliary_num_convs >= 0, got "
                f"{self.auxiliary_channels} and {self.auxiliary_num_convs}"
            )
        self._check_probability("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")

    @property
    def image_size_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s[0], s[1]) if isinstance(s, list) else (s, s)

    @property
    def patch_size_hw(self) -> tuple[int, int]:
        s = self.patch_size
        return (s[0], s[1]) if isinstance(s, list) else (s, s)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patches along height and width for the configured image size."""
        (h, w), (ph, pw) = self.image_size_hw, self.patch_size_hw
        return h // ph, w // pw

    def segmentation_feature_indices(self) -> list[int]:
        """Indices into ``hidden_states`` (0 = embeddings) that feed the segmentation FPN.

        HF selects hidden state ``i`` when ``i + 1`` is in ``out_indices``; an index that selects
        nothing is tolerated as long as at least three maps remain (the decode head needs three
        laterals; with exactly three the last one also feeds the pyramid pooling).
        """
        name = type(self).__name__
        last = self.num_hidden_layers + 1
        beyond = [i for i in self.out_indices if i > last]
        if beyond:
            raise ValueError(
                f"{name}.out_indices {self.out_indices} goes past the last layer: with "
                f"num_hidden_layers={self.num_hidden_layers} each index must be <= {last}"
            )
        if len(self.out_indices) != 4:
            raise ValueError(
                f"{name}.out_indices must list 4 integers for semantic segmentation, got {self.out_indices}"
            )
        if self.use_auxiliary_head and self.auxiliary_num_convs == 0 and self.auxiliary_channels != self.hidden_size:
            raise ValueError(
                f"{name}.auxiliary_channels ({self.auxiliary_channels}) must equal hidden_size "
                f"({self.hidden_size}) when auxiliary_num_convs is 0 (the FCN head then has no conv to change width)"
            )
        chosen = [i for i in range(self.num_hidden_layers + 1) if i + 1 in self.out_indices]
        if len(chosen) < 3:
            raise ValueError(
                f"{name}.out_indices {self.out_indices} selects only {len(chosen)} feature maps; "
                "segmentation needs at least 3"
            )
        return chosen


CONFIG_CLASSES = {
    cls.model_type: cls for cls in (Data2VecTextConfig, Data2VecAudioConfig, Data2VecVisionConfig)
}


def config_from_dict(config_dict: dict[str, Any]) -> Data2VecConfigBase:
    """Pick the config class from ``model_type``."""
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; d2v reads {', '.join(sorted(CONFIG_CLASSES))}"
        )
    return CONFIG_CLASSES[model_type].from_dict(config_dict)


def load_config(path: str | os.PathLike, **hub_options: Any) -> Data2VecConfigBase:
    """Load any of the three configs from a directory, a ``config.json`` path or a hub id
    (``hub_options``: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``)."""
    return config_from_dict(read_json_object(config_json_path(path, hub_options)))


def config_json_path(path: str | os.PathLike, hub_options: dict[str, Any]) -> str:
    """The ``config.json`` of a folder or hub id, or ``path`` itself when it names a JSON file.

    Raises:
        FileNotFoundError / OSError: no such path or hub id, a broken symbolic link, a folder
            without ``config.json``, or a file that is no JSON config (a weight file: pass its folder).
    """
    path = resolve_pretrained(path, [CONFIG_NAME], **hub_options)
    if os.path.isdir(path):
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}")
        return file
    if not path.endswith(".json"):
        raise OSError(f"{path!r} is not a {CONFIG_NAME} file (a weight file?): pass the checkpoint folder that "
                      f"holds {CONFIG_NAME}, or the {CONFIG_NAME} itself")
    return path
