"""What every d2v PyTorch model shares: construction from the weight spec, loading, saving."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from d2v_common.models import outputs as _outputs
from d2v_common.checkpoints.formats import formats_from_flags
from d2v_common.configs import Data2VecConfigBase
from d2v_common.checkpoints.hub import pop_hub_options
from d2v_common.models.input_types import check_input_type
from d2v_common.models.checks import (
    architecture_of, check_checkpointable, check_config_class, check_names_match_spec, check_no_missing,
    weighted_layer_sum_size,
)
from d2v_common.models.outputs import finish
from d2v_common.loader.pretrained import LoadOptions, building_nested, load_pretrained, save_arrays_for
from d2v_common.models.registry import ModelRegistry
from d2v_common.spec import WeightSpec, weight_spec
from d2v_torch.layers import checkpoint_options


def _register_output_pytrees() -> None:
    """Make every d2v output class a pytree node (children: its fields, None included), so
    ``torch.export``, ``torch.compile`` and ``torch.utils._pytree`` see through model outputs."""
    from torch.utils import _pytree as pytree

    for output_cls in vars(_outputs).values():
        if not (isinstance(output_cls, type) and issubclass(output_cls, _outputs.ModelOutput)):
            continue
        if output_cls is _outputs.ModelOutput or output_cls in pytree.SUPPORTED_NODES:
            continue

        def flatten(out, _fields=output_cls.fields):
            return [getattr(out, f) for f in _fields], None

        def flatten_with_keys(out, _fields=output_cls.fields):
            return [(pytree.MappingKey(f), getattr(out, f)) for f in _fields], None

        def unflatten(values, _context, _cls=output_cls):
            return _cls(*values)

        pytree.register_pytree_node(
            output_cls, flatten, unflatten,
            serialized_type_name=f"d2v.{output_cls.__name__}",
            flatten_with_keys_fn=flatten_with_keys,
        )


_register_output_pytrees()


def torch_dtype_argument(dtype: Any, torch_dtype: Any) -> torch.dtype | str | None:
    """The dtype asked of ``from_pretrained`` / ``from_config``: transformers 4.57's ``dtype=``
    or its older name ``torch_dtype=`` (both given: they must agree), as a ``torch.dtype``, a
    floating dtype name (``"bfloat16"``, ``"torch.float16"``) or ``"auto"`` (config.json's
    ``dtype``, else the loaded dtype)."""
    values = [_as_torch_dtype(v) for v in (dtype, torch_dtype) if v is not None]
    if len(values) == 2 and values[0] != values[1]:
        raise TypeError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass only dtype= (torch_dtype= is "
                        "its older name)")
    return values[0] if values else None


def _as_torch_dtype(value: Any) -> torch.dtype | str:
    if value == "auto" or isinstance(value, torch.dtype):
        return value
    found = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else None
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, its name (e.g. 'bfloat16') or 'auto'; got {value!r}")
    return found


def _resolve_auto_dtype(value: torch.dtype | str | None, config: Data2VecConfigBase) -> torch.dtype | None:
    """"auto": the dtype config.json names (None: keep the loaded weights' dtype)."""
    if value != "auto":
        return value
    return _as_torch_dtype(config.dtype) if config.dtype not in (None, "auto") else None


def torch_seed() -> int:
    """A seed drawn from torch's RNG, so ``torch.manual_seed`` makes fresh models reproducible."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def weighted_layer_sum(hidden_states: tuple, layer_weights: torch.Tensor) -> torch.Tensor:
    """Softmax-weighted sum of every hidden state (embeddings output included): the SUPERB-style
    head input of ``use_weighted_layer_sum`` (audio, text and vision classifiers)."""
    stacked = torch.stack(hidden_states, dim=1)
    w = torch.softmax(layer_weights, dim=-1)
    return (stacked * w.view(-1, *([1] * (stacked.dim() - 2)))).sum(dim=1)


# Every PyTorch model class by its architecture, filled by ``__init_subclass__`` below (and
# the pretraining base); ``d2v_torch.MODEL_CLASSES`` and the tools read it.
MODEL_REGISTRY = ModelRegistry("torch")


class Data2VecPreTrainedModel(nn.Module):
    """Base of the 15 PyTorch classes. Subclasses set ``config_class`` and ``main_input_name``,
    build their modules so that ``state_dict()`` keys equal the weight spec's names, and call
    ``post_init()`` last."""

    config_class: type[Data2VecConfigBase] = Data2VecConfigBase
    # The HF class name a concrete model implements (its weight spec and config.json name);
    # every model class sets it, abstract bases leave it empty.
    architecture: str = ""
    base_model_prefix = ""
    main_input_name = ""
    supports_gradient_checkpointing = True

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY.register(cls)  # a class that sets ``architecture`` (d2v_common.models.registry)

    def __init__(self, config: Data2VecConfigBase):
        check_config_class(type(self).__name__, config, self.config_class)
        super().__init__()
        self.config = config
        self.spec: WeightSpec = weight_spec(config, architecture_of(type(self)))

    # ----------------------------------------------------------------- weights <-> spec
    def post_init(self) -> None:
        """Check the module tree against the spec, then initialise every tensor from it."""
        if building_nested():
            return  # nested in a head: the head checks and initialises everything
        check_names_match_spec(type(self).__name__, set(self.state_dict().keys()), set(self.spec.names()))
        if any(p.is_meta for p in self.parameters()):
            return  # built for from_pretrained: weights come from the checkpoint
        self.load_arrays(self.spec.init_arrays(torch_seed()))

    def _init_layer_weights(self) -> None:
        """``layer_weights`` of the weighted layer sum when the config asks for it (and the head
        has one: d2v_common.models.checks.WEIGHTED_LAYER_SUM_HEADS), else None."""
        size = weighted_layer_sum_size(self.config, self.architecture)
        self.layer_weights = nn.Parameter(torch.zeros(size)) if size else None

    def tie_weights(self) -> None:
        """Re-share tied tensors (the LM decoder and the word embeddings); heads override."""

    def load_arrays(self, arrays: dict[str, np.ndarray], assign: bool = False) -> None:
        """Load canonical arrays (every spec name; tied copies may be omitted)."""
        arrays = self.spec.tie(dict(arrays))
        check_no_missing(type(self).__name__, [n for n in self.spec.names() if n not in arrays])
        state = {}
        for p in self.spec:
            array = np.asarray(arrays[p.name])
            if tuple(array.shape) != p.shape:
                raise ValueError(f"{p.name}: got shape {tuple(array.shape)}, expected {p.shape}")
            if not array.flags.writeable:
                array = array.copy()
            state[p.name] = torch.from_numpy(np.require(array, requirements="C"))
        if not assign:
            dtypes = {k: v.dtype for k, v in self.state_dict().items()}
            state = {k: v.to(dtypes[k]) for k, v in state.items()}
        self.load_state_dict(state, strict=True, assign=assign)
        self.tie_weights()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Canonical numpy copies of every tensor (tied copies included), float32 for bf16/fp16."""
        out = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[name] = t.numpy().copy()
        return out

    # -------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: Data2VecConfigBase | None = None,
        ignore_mismatched_sizes: bool = False,
        check_finite: bool = False,
        output_loading_info: bool = False,
        checkpoint_format: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ):
        """Load ``model.safetensors``, ``pytorch_model.bin`` or ``tf_model.h5`` (first found, in
        that order) from a directory, a single weight file with ``config.json`` beside it, a
        fairseq data2vec 2.0 ``checkpoint.pt`` or a Hugging Face Hub id (a local path wins;
        ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` as in HF),
        through ``d2v_common.loader.pretrained.load_pretrained``. Other keyword arguments override config
        fields, as in HF. ``dtype`` (or its older name ``torch_dtype``): the dtype to cast to, as in HF
        (``torch.bfloat16``, ``"bfloat16"``, ``"auto"``)."""
        torch_dtype = torch_dtype_argument(config_overrides.pop("dtype", None), torch_dtype)  # HF 4.57's name
        options = LoadOptions(checkpoint_format, ignore_mismatched_sizes, check_finite,
                              pop_hub_options(config_overrides))  # revision, cache_dir, ...

        def build(config: Data2VecConfigBase):
            with torch.device("meta"):  # no memory, no random init: the checkpoint fills it
                return cls(config)

        loaded = load_pretrained(pretrained_model_name_or_path, options, config_class=cls.config_class, config=config,
                                 config_overrides=config_overrides, build=build, seed=torch_seed)
        model, report = loaded.model, loaded.report
        model.load_arrays(loaded.arrays, assign=True)
        del loaded  # the arrays: the model holds the weights now
        torch_dtype = _resolve_auto_dtype(torch_dtype, model.config)
        if torch_dtype is not None:
            model.to(torch_dtype)
        model.eval()
        model.load_report = report
        return (model, report) if output_loading_info else model

    @classmethod
    def from_config(cls, config: Data2VecConfigBase, *, dtype: Any = None, torch_dtype: Any = None):
        """A new model with freshly initialised weights for ``config`` (HF's ``from_config``):
        nothing is read from disk. ``dtype`` / ``torch_dtype`` as in ``from_pretrained``.

        Examples:
            >>> model = Data2VecAudioModel.from_config(Data2VecAudioConfig(num_hidden_layers=2))  # doctest: +SKIP
        """
        if not isinstance(config, Data2VecConfigBase):
            raise TypeError(f"{cls.__name__}.from_config takes a config object such as {cls.config_class.__name__}(...)"
                            f" or {cls.config_class.__name__}.from_pretrained(path), got {type(config).__name__}")
        model = cls(config)
        dtype = _resolve_auto_dtype(torch_dtype_argument(dtype, torch_dtype), config)
        return model.to(dtype) if dtype is not None else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        tf_h5: bool = False,
        *,
        formats: list[str] | None = None,
        max_shard_size: int | str | None = "5GB",
    ) -> list[str]:
        """Write the weights, then ``config.json`` last (an interrupted save keeps the old files).

        Args:
            save_directory: the directory to write (created if missing).
            safe_serialization: ``model.safetensors`` when True, else ``pytorch_model.bin``.
            tf_h5: also write HF's ``tf_model.h5`` (loadable by transformers' TF classes).
            formats: names from ``d2v_common.checkpoints.formats.CHECKPOINT_FORMATS`` (e.g.
                ``["safetensors", "tf-h5"]``); when given, the two flags above are not used.
            max_shard_size: as in HF: weights larger than this (bytes, or ``"500MB"``, ``"2GB"``)
                are written as shards ``model-00001-of-0000N.safetensors`` with
                ``model.safetensors.index.json`` (``tf_model.h5`` is always one file); None: one file.

        Returns:
            The paths written.
        """
        formats = formats_from_flags(formats, safe_serialization, tf_h5)
        return save_arrays_for(save_directory, self.state_arrays(), self.spec, self.config, formats,
                               max_shard_size=max_shard_size)

    # ------------------------------------------------------------------------ helpers
    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute encoder layers in the backward pass (same gradients, less memory).

        Args:
            gradient_checkpointing_kwargs: keyword arguments of ``torch.utils.checkpoint.checkpoint``,
                as in HF (its Trainer passes ``{"use_reentrant": False}``); ``use_reentrant``
                defaults to False, the mode torch recommends.
        """
        options = checkpoint_options(gradient_checkpointing_kwargs)
        encoders = [module for module in self.modules() if hasattr(module, "gradient_checkpointing")]
        check_checkpointable(type(self).__name__, len(encoders))  # never a silent no-op
        for module in encoders:
            module.gradient_checkpointing = True
            module.checkpoint_options = options

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether ``gradient_checkpointing_enable`` is in effect."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    @staticmethod
    def _head_output(output_class, loss, logits, base, return_dict: bool):
        """A head's last step: ``(loss, logits)`` with the encoder's hidden states and attentions."""
        return finish(output_class(loss, logits, base.hidden_states, base.attentions), return_dict)

    def _output_flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The call's output switches, each falling back to the config's default."""
        return (
            self._flag(output_attentions, "output_attentions"),
            self._flag(output_hidden_states, "output_hidden_states"),
            self._return_dict_default if return_dict is None else return_dict,
        )

    def _check_value_input(self, name: str, value: Any) -> None:
        """``value`` (pixels, waveforms) must be a torch tensor in the model's dtype (any
        floating dtype under ``torch.autocast``, which casts it)."""
        autocast = isinstance(value, torch.Tensor) and torch.is_autocast_enabled(value.device.type)
        check_input_type(name, value, framework="torch", tensor_types=torch.Tensor,
                         model_dtype=None if autocast else self.dtype)

    def _flag(self, value: bool | None, name: str) -> bool:
        """A call argument, falling back to the config's default (``output_attentions`` ...)."""
        return getattr(self.config, name) if value is None else value

    @property
    def _return_dict_default(self) -> bool:
        return self.config.use_return_dict


def world_size() -> int:
    """Processes of the initialised ``torch.distributed`` group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` summed over every process of the group."""
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t


class TeacherStudentPretrainingModule(nn.Module):
    """Base of the data2vec 1.0 and 2.0 pretraining wrappers (``d2v_torch.pretraining``,
    ``d2v_torch.data2vec2_pretraining``): a concrete wrapper (one that sets ``architecture``,
    an HF-style name in d2v_common.models.registry.PRETRAINING_ARCHITECTURES) registers itself
    beside the model classes; the student is the backbone under ``base_model_prefix`` and the
    EMA ``teacher`` always runs in eval mode."""

    architecture = ""
    modality = ""
    base_model_prefix = ""
    backbone_class: type = nn.Module
    config_class: type = object

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY.register(cls)

    def __init__(self, config):
        check_config_class(type(self).__name__, config, self.config_class)
        super().__init__()

    @property
    def student(self):
        return getattr(self, self.base_model_prefix)

    # The student trains; the EMA teacher runs without gradients (nothing to recompute).
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the student's encoder layers in the backward pass (see the model classes)."""
        self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.student.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.student.is_gradient_checkpointing

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher runs without dropout, as upstream's EMA teacher
        return self

    def _start_ema_count_and_mask_rng(self, seed: int | None) -> None:
        """No EMA update done yet; ``rng`` draws the masks not given (from torch's RNG without
        ``seed``, so ``torch.manual_seed`` makes runs reproducible)."""
        self.num_updates = 0
        self.last_tau: float | None = None
        self.rng = np.random.default_rng(torch_seed() if seed is None else seed)
