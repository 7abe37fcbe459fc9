"""What every d2v Keras model shares: variables named by the weight spec, loading, saving,
and Keras training with the built-in loss. Twin of ``d2v_torch/base.py``."""

from __future__ import annotations

import functools
import os
from typing import Any

import keras
import numpy as np
from keras import ops

from d2v_common.spec import layouts
from d2v_common.checkpoints.formats import formats_from_flags
from d2v_common.configs import CONFIG_CLASSES, Data2VecConfigBase
from d2v_common.checkpoints.hub import pop_hub_options
from d2v_common.models.checks import (
    architecture_of, check_config_class, check_names_match_spec, check_no_missing, snake_case,
    weighted_layer_sum_size,
)
from d2v_common.models.outputs import finish
from d2v_common.models.registry import ModelRegistry
from d2v_common.loader.pretrained import (
    LoadOptions,
    building_nested,
    load_pretrained,
    save_arrays_for,
    skip_initialisation,
    weights_come_later,
)
from d2v_common.spec import WeightSpec, weight_spec
from d2v_tf import adapters, backend
from d2v_tf.checkpointing import checkpointing_encoders, set_gradient_checkpointing
from d2v_tf.layers import Linear, add_weight_maybe_deferred, deferred_variables, pending_variables


def _public_attributes(layer: keras.layers.Layer):
    """(canonical name, value) of a layer's public attributes. Keras reserves some names
    (``output`` is a Layer property, and Keras' saver skips it), so a sub-layer that PyTorch
    calls ``output`` is stored as ``output_``: one trailing underscore is dropped here."""
    # On the torch backend a Keras layer is a torch.nn.Module, which keeps sub-layers in _modules.
    attributes = {**vars(layer), **(getattr(layer, "_modules", None) or {})}
    for attr, value in attributes.items():
        if not attr.startswith("_"):
            yield (attr[:-1] if attr.endswith("_") else attr), value


def _named_leaves(layer: keras.layers.Layer, prefix: str = ""):
    """(attribute path, variable or layer) of every variable, and of every layer built on a
    Keras built-in (``SPEC_ATTRIBUTES``: ``Linear``, ``Embedding``), whose own variables are
    listed through it."""

    def walk(value: Any, path: str):
        if isinstance(value, keras.Variable):
            yield path, value
        elif isinstance(value, keras.layers.Layer):
            if hasattr(value, "SPEC_ATTRIBUTES"):
                yield path, value
                return
            for attr, child in _public_attributes(value):
                yield from walk(child, f"{path}.{attr}" if path else attr)
        elif isinstance(value, (list, tuple)):
            for i, child in enumerate(value):
                yield from walk(child, f"{path}.{i}")

    for attr, child in _public_attributes(layer):
        yield from walk(child, f"{prefix}{attr}")


def named_variables(layer: keras.layers.Layer, prefix: str = "") -> dict[str, keras.Variable]:
    """Variables by attribute path (``encoder.layer.0.attention.query.kernel``), the Keras
    counterpart of ``torch.nn.Module.state_dict()`` keys: the weight spec's variables only
    (LoRA and quantization scales are not listed)."""
    out: dict[str, keras.Variable] = {}
    for path, leaf in _named_leaves(layer, prefix):
        if isinstance(leaf, keras.Variable):
            out[path] = leaf
            continue
        for name, attr in leaf.SPEC_ATTRIBUTES.items():
            variable = getattr(leaf, attr, None)
            if variable is not None:
                out[f"{path}.{name}"] = variable
    return out


def named_values(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    """Numpy values by attribute path, as ``save_pretrained`` writes them: LoRA deltas merged,
    quantized kernels dequantized (``Linear.spec_values``)."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in _named_leaves(layer):
        if isinstance(leaf, keras.Variable):
            out[path] = np.asarray(leaf.numpy())
        else:
            out.update({f"{path}.{name}": value for name, value in leaf.spec_values().items()})
    return out


def name_sublayers(layer: keras.layers.Layer) -> None:
    """Name every sub-layer by its attribute path (``encoder.layer.0``). Keras keys list items
    in ``.keras`` files by layer name, and default names carry process-wide counters, so
    without this a saved model could not find its weights again."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, keras.layers.Layer):
            if path:
                value.name = path
            for attr, child in _public_attributes(value):
                walk(child, f"{path}.{attr}" if path else attr)
        elif isinstance(value, (list, tuple)):
            for i, child in enumerate(value):
                walk(child, f"{path}.{i}")

    walk(layer, "")


def set_variable_paths(variables: dict[str, keras.Variable]) -> None:
    """Give each variable the Keras path ``<module path>/<leaf>`` (the path Keras gives the
    variables a layer adds later: LoRA, quantization scales). Variables are made in the layers'
    ``__init__``, before the layers have their names; ``keras.distribution`` layout maps match
    these paths, so under a distribution each variable takes its layout again."""
    distribution = keras.distribution.distribution()
    for path, variable in variables.items():
        module, leaf = path.rsplit(".", 1) if "." in path else ("", path)
        variable._path = f"{module}/{leaf}" if module else leaf
        if distribution is not None:  # placed when its value is assigned (load_arrays)
            variable._layout = None  # the one it took under its first path
            variable._layout = distribution.get_variable_layout(variable)


# tf.distribute on TensorFlow, nothing to reduce elsewhere (JAX arrays are global): see d2v_tf.backend
replica_context = backend.replica_context
all_reduce_sum = backend.all_reduce_sum


def count_not_equal(labels, ignore_index: int):
    """Labels a cross-entropy averages over: those other than ``ignore_index``."""
    return ops.sum(ops.cast(ops.not_equal(ops.convert_to_tensor(labels), ignore_index), "int32"))


def unpack_inputs(call):
    """Let ``call`` take its inputs as one dict (``model({"pixel_values": x, "labels": y})``),
    as Keras passes them from ``fit``."""

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        if args and isinstance(args[0], dict):
            merged = dict(args[0])
            overlap = set(merged) & set(kwargs)
            if overlap:
                raise TypeError(f"inputs given twice: {sorted(overlap)}")
            return call(self, *args[1:], **merged, **kwargs)
        return call(self, *args, **kwargs)

    return wrapper


def weighted_layer_sum(hidden_states, layer_weights):
    """Softmax-weighted sum of every hidden state (embeddings output included): the SUPERB-style
    head input of ``use_weighted_layer_sum`` (audio, text and vision classifiers)."""
    stacked = ops.stack(hidden_states, axis=1)
    w = ops.softmax(ops.cast(layer_weights, stacked.dtype), axis=-1)
    return ops.sum(stacked * ops.reshape(w, (1, -1) + (1,) * (len(stacked.shape) - 2)), axis=1)


# Every Keras model class by its architecture (HF's PyTorch name, no "TF"), filled by
# ``__init_subclass__`` below (and the pretraining base); ``d2v_tf.MODEL_CLASSES`` reads it.
MODEL_REGISTRY = ModelRegistry("keras", class_prefix="TF")


class TFData2VecPreTrainedModel(backend.LayerHooks, backend.ModelSteps, keras.Model):
    """Base of the Keras classes. Subclasses set ``config_class`` and ``main_input_name``, hold
    their layers under the PyTorch module names, and call ``post_init()`` last."""

    config_class: type[Data2VecConfigBase] = Data2VecConfigBase
    # The HF class name a concrete model implements (its weight spec and config.json name);
    # every model class sets it, abstract bases leave it empty.
    architecture: str = ""
    base_model_prefix = ""
    main_input_name = ""

    def __init_subclass__(cls, **kwargs: Any):
        # every d2v model can be restored from a .keras file with safe_mode=True
        super().__init_subclass__(**kwargs)
        keras.saving.register_keras_serializable(package="d2v")(cls)
        MODEL_REGISTRY.register(cls)  # a class that sets ``architecture`` (d2v_common.models.registry)

    def __init__(self, config: Data2VecConfigBase, **kwargs: Any):
        check_config_class(type(self).__name__, config, self.config_class)
        kwargs.setdefault("name", snake_case(type(self).__name__))
        super().__init__(**kwargs)
        self.config = config
        self.spec: WeightSpec = weight_spec(config, architecture_of(type(self)))

    # ----------------------------------------------------------------- weights <-> spec
    def _keras_variables(self) -> dict[str, keras.Variable]:
        return named_variables(self)

    def add_weight(self, *args, **kwargs):
        return add_weight_maybe_deferred(super().add_weight, *args, **kwargs)

    def _init_layer_weights(self) -> None:
        """``layer_weights`` of the weighted layer sum when the config asks for it (and the head
        has one: d2v_common.models.checks.WEIGHTED_LAYER_SUM_HEADS), else None."""
        size = weighted_layer_sum_size(self.config, self.architecture)
        self.layer_weights = self.add_weight(shape=(size,), initializer="zeros", name="layer_weights") if size else None

    def post_init(self) -> None:
        """Check the variables against the spec, then initialise them from it."""
        if building_nested():
            return
        expected = {layouts.keras_name(p) for p in self.spec.stored()}
        check_names_match_spec(type(self).__name__, set(self._keras_variables()), expected)
        self.built = True
        name_sublayers(self)
        set_variable_paths(self._keras_variables())
        # built for from_pretrained: the variables are created from the loaded values (load_arrays)
        self._pending_variables = pending_variables()
        if not skip_initialisation():
            self.load_arrays(self.spec.init_arrays(int(np.random.randint(0, 2**31 - 1))))

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign canonical arrays (every stored spec name) through the layout rules."""
        quantized = adapters.quantized_layers(self._spec_layers())
        if quantized:
            raise ValueError(f"{type(self).__name__}: load weights before quantize(); {len(quantized)} layers are "
                             f"quantized ({next(iter(quantized.values()))})")
        variables = self._keras_variables()
        check_no_missing(type(self).__name__, [p.name for p in self.spec.stored() if p.name not in arrays])
        pending, self._pending_variables = getattr(self, "_pending_variables", None), None
        for p in self.spec.stored():
            # one tensor at a time: lazily read checkpoints never sit in memory whole
            def value(p=p):
                tensor, perm = arrays[p.name], layouts.leaf_rule(p).perm
                if perm is None or hasattr(tensor, "read_keras_layout"):  # already in Keras layout
                    return layouts.keras_array(p, tensor).astype(p.dtype, copy=False)
                array = np.asarray(tensor).astype(p.dtype, copy=False)
                layouts.check_shape(p, array.shape)
                return backend.transpose_weight(array, perm)

            variable = variables[layouts.keras_name(p)]
            if pending is None or not pending.give(variable, value):
                variable.assign(value())
        if pending is not None:
            pending.create()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Canonical numpy arrays of every tensor (tied copies included)."""
        values = named_values(self)
        out = {p.name: layouts.from_keras_array(p, values[layouts.keras_name(p)]) for p in self.spec.stored()}
        return self.spec.tie(out)

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
        **config_overrides: Any,
    ):
        """Load ``model.safetensors``, ``pytorch_model.bin`` or HF's ``tf_model.h5`` (first
        found, in that order) from a directory, a single weight file with ``config.json`` beside
        it, a fairseq data2vec 2.0 ``checkpoint.pt`` or a Hugging Face Hub id (a local path wins;
        ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` as in HF),
        through ``d2v_common.loader.pretrained.load_pretrained``. Other keyword arguments override config
        fields, as in HF."""
        options = LoadOptions(checkpoint_format, ignore_mismatched_sizes, check_finite,
                              pop_hub_options(config_overrides))  # revision, cache_dir, ...

        def build(config: Data2VecConfigBase):
            with weights_come_later(), deferred_variables():
                return cls(config)

        loaded = load_pretrained(pretrained_model_name_or_path, options, config_class=cls.config_class, config=config,
                                 config_overrides=config_overrides, build=build,
                                 seed=lambda: int(np.random.randint(0, 2**31 - 1)))
        model, report = loaded.model, loaded.report
        model.load_arrays(loaded.arrays)  # tensor by tensor: lazily read checkpoints never sit in memory whole
        del loaded
        model.load_report = report
        return (model, report) if output_loading_info else model

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

    # ------------------------------------------------------------ Keras serialisation
    def get_config(self) -> dict:
        config = {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict()}
        # LoRA and quantization change the layers' variables: from_config does them again
        # before Keras loads the saved values
        if getattr(self, "_lora", None):
            config["lora"] = dict(self._lora)
        quantized = adapters.quantized_layers(self._spec_layers())
        if quantized:
            config["quantized"] = quantized
        return config

    @classmethod
    def from_config(cls, config: dict | Data2VecConfigBase):
        """A model from a d2v config object (HF's ``from_config``: freshly initialised weights),
        or from the dict ``get_config`` wrote (Keras deserialisation, ``.keras`` files)."""
        if isinstance(config, Data2VecConfigBase):
            return cls(config)
        if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
            raise TypeError(f"{cls.__name__}.from_config takes a config object such as "
                            f"{cls.config_class.__name__}(...) or the dict get_config() returns, got "
                            f"{type(config).__name__}")
        config = dict(config)
        data = config.pop("config")
        config_cls = CONFIG_CLASSES.get(data.get("model_type"), cls.config_class)
        config.pop("dtype", None)
        lora, quantized = config.pop("lora", None), config.pop("quantized", None)
        model = cls(config_cls.from_dict(data), **config)
        if lora:
            model.enable_lora(lora["rank"], target=lora["layers"], alpha=lora["alpha"])
        for mode in dict.fromkeys((quantized or {}).values()):
            paths = {path for path, m in quantized.items() if m == mode}
            layers = {id(layer) for path, layer in model._spec_layers().items() if path in paths}
            model.quantize(mode, filters=lambda layer, layers=layers: id(layer) in layers)
        return model

    # ------------------------------------------------------ big models on small machines
    def _spec_layers(self) -> dict[str, keras.layers.Layer]:
        """The layers built on Keras built-ins (``Linear``, ``Embedding``) by module path."""
        return {path: leaf for path, leaf in _named_leaves(self) if not isinstance(leaf, keras.Variable)}

    def enable_lora(self, rank: int, target: str | list[str] = "query_value", alpha: float | None = None) -> None:
        """LoRA fine-tuning (keras-hub's convention): the chosen dense layers gain trainable
        low-rank factors (Keras' ``Dense.enable_lora``) and every other backbone weight is frozen;
        the task head (what sits outside the backbone) stays trainable.

        Args:
            rank: the rank of the factors (a positive integer; 4 to 16 are usual).
            target: ``"query_value"`` (default: the attention's query and value projections;
                data2vec 2.0's fused ``qkv_proj``), ``"attention"`` (query, key, value), ``"all"``
                (every dense layer of the backbone), or a list of layer names (``["query",
                "intermediate.dense"]``) or module paths.
            alpha: the delta is scaled by ``alpha / rank`` (default: ``rank``, a scale of 1).

        ``save_pretrained`` writes the merged weights (an ordinary checkpoint); ``model.save``
        keeps the merged kernels with LoRA enabled again on reload (Keras' ``Dense``).

        Examples:

        ```python
        model.enable_lora(8)                  # query and value projections
        model.compile(optimizer="adam")
        model.fit(x, y)
        model.save_pretrained("merged")       # plain checkpoint, LoRA merged in
        ```
        """
        dense = {path: layer for path, layer in self._spec_layers().items() if isinstance(layer, Linear)}
        self._lora = adapters.enable_lora(dense, self._keras_variables(), self.spec, rank, target, alpha)
        self.train_function = self.test_function = self.predict_function = None  # traced for the old variables

    def quantize(self, mode: str | None = None, config=None, filters=None, **kwargs) -> None:
        """Quantize the dense layers' weights (Keras' ``Model.quantize``): ``"int8"`` (weights and
        activations, per channel), ``"int4"``, ``"float8"``. By default every ``Linear`` is
        converted; ``filters`` (a regex on layer names, a list of them, or a callable) picks
        others, embeddings included. The quantized model saves and reloads with ``model.save``
        / ``keras.saving.load_model``; ``save_pretrained`` writes dequantized float weights
        (int8, per-channel int4, float8).

        Examples:

        ```python
        model.quantize("int8")
        logits = model(**inputs).logits
        ```
        """
        if filters is None:
            filters = adapters.quantizable
        # Keras runs a full gc.collect() for every float kernel it drops (to free device memory):
        # seconds per layer in a large process. Collect once, after the last layer, instead.
        with adapters.one_garbage_collection():
            super().quantize(mode, config=config, filters=filters, **kwargs)

    @staticmethod
    def layout_map(device_mesh, model_parallel_dim_name: str = "model"):
        """A ``keras.distribution.LayoutMap`` for ``ModelParallel`` that shards the encoder's
        dense kernels over the mesh axis ``model_parallel_dim_name`` (query/key/value and the
        feed-forward's first projection by output column, the projections back by input row);
        every other weight is replicated. Build or load the model inside the distribution's
        scope.

        Examples:

        ```python no-run
        mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], keras.distribution.list_devices())
        parallel = keras.distribution.ModelParallel(layout_map=TFData2VecTextModel.layout_map(mesh),
                                                    batch_dim_name="batch")
        with parallel.scope():
            model = TFData2VecTextModel.from_pretrained("facebook/data2vec-text-base")
        ```
        """
        return adapters.layout_map(device_mesh, model_parallel_dim_name)

    # ----------------------------------------------------------------- Keras training
    def loss_from_outputs(self, outputs, labels):
        """The head's built-in loss from its outputs and labels (heads override)."""
        raise NotImplementedError(f"{type(self).__name__} has no built-in loss")

    def _labels(self, x, y):
        if y is not None:
            return y
        return x.get("labels") if isinstance(x, dict) else None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The built-in loss unless a loss was given to ``compile``.

        Under a multi-replica ``tf.distribute`` strategy each replica returns its share of the
        global batch's loss (Keras sums the replicas' gradients and losses), so ``fit`` gives
        the loss, metrics and updates of one device on the same global batch.
        """
        if getattr(self, "_compile_loss", None) is not None:
            return super().compute_loss(x, y, self.metric_outputs(y_pred), sample_weight, training)
        labels = self._labels(x, y)
        if getattr(y_pred, "loss", None) is not None:
            loss = y_pred.loss
        elif labels is None:
            raise ValueError(f"{type(self).__name__}: fit/evaluate needs labels, as y or as x['labels']")
        else:
            loss = self.loss_from_outputs(y_pred, labels)
        ctx = replica_context()
        if ctx is None:
            return loss
        count = self.loss_count(x, labels)
        if count is None:  # a summed loss: the replicas' losses already add up to the global one
            return loss
        count = ops.cast(count, loss.dtype)
        # this replica's mean times its share of the global count (as the pretraining loss does)
        return loss * count / ops.maximum(all_reduce_sum(ctx, count), ops.ones_like(count))

    def loss_count(self, x, labels):
        """How many terms the built-in loss averages over on this replica (heads override):
        by default one per example of the batch; None for a loss summed over the batch."""
        first = next(t for t in keras.tree.flatten(x) if t is not None)
        return ops.shape(first)[0]

    def metric_outputs(self, outputs):
        """What compiled metrics (and a compiled loss) see: the logits."""
        return outputs.logits

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, self._labels(x, y), self.metric_outputs(y_pred), sample_weight)

    def _predict_outputs(self, out) -> dict:
        """What ``predict`` returns per batch (the backend's ``predict_step`` calls this)."""
        out = dict(out)
        out.pop("past_key_values", None)  # a decoding cache means nothing once batches are joined
        return out

    # Keras' compiled steps report a failed value check (labels out of range ...) as the
    # eager call's ValueError once the step returns (see backend.value_check).
    def make_train_function(self, force=False):
        super().make_train_function(force)
        self.train_function = backend.raising_failed_checks(self.train_function, self)
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = backend.raising_failed_checks(self.test_function, self)
        return self.test_function

    def make_predict_function(self, force=False):
        super().make_predict_function(force)
        self.predict_function = backend.raising_failed_checks(self.predict_function, self)
        return self.predict_function

    # ------------------------------------------------------------------ fast inference
    def make_fast(self, jit_compile: bool | None = None):
        """A compiled inference callable; the model itself is left as it is.

        ``fast = model.make_fast(); out = fast(pixel_values=x)`` runs the call (``training=False``)
        compiled by the Keras backend (``d2v_tf.backend``):

        - TensorFlow: one ``tf.function``, XLA-compiled with ``jit_compile=True``, a TensorFlow
          graph with ``False``. The default (None) picks XLA when a GPU is visible and the graph
          on CPU, where TF's oneDNN kernels (matmuls with their bias and activation fused) beat
          XLA's, and XLA has no fast bfloat16 matmul (see the README's benchmarks).
        - JAX: ``jax.jit`` of ``model.stateless_call`` (the variables' current values are read
          at each call); ``jit_compile=False`` runs it un-jitted.
        - PyTorch: the eager model under ``torch.no_grad()``.

        It traces once per input signature (shapes, dtypes and Python flags such as
        ``output_hidden_states``) and returns the model's output class, or its tuple with
        ``return_dict=False``. The first positional argument, if any, is the model's main input
        (or a dict of inputs, as for ``model(...)``).
        """
        compiled = backend.raising_failed_checks(backend.compile_inference(self, jit_compile))

        def fast(*args, return_dict=None, **inputs):
            if len(args) > 1:
                raise TypeError("make_fast(): pass at most one positional input (the main input or a dict)")
            if args:
                given = dict(args[0]) if isinstance(args[0], dict) else {self.main_input_name: args[0]}
                overlap = set(given) & set(inputs)
                if overlap:
                    raise TypeError(f"inputs given twice: {sorted(overlap)}")
                inputs = {**given, **inputs}
            if "training" in inputs:
                raise TypeError("make_fast() runs inference only (training=False)")
            out = compiled(inputs)
            return out if (self._return_dict_default if return_dict is None else return_dict) else out.to_tuple()

        return fast

    # ------------------------------------------------------------------------ serving
    def export(
        self, filepath, format: str = "tf_saved_model", verbose: bool | None = None, input_signature=None, **kwargs
    ):
        """Write a serving artifact; no call is needed first (the signature comes from the config).

        Args:
            filepath: the SavedModel directory, or the ``.tflite`` file for LiteRT.
            format: ``"tf_saved_model"`` (default) or ``"litert"``.
            verbose: print where the artifact went.
            input_signature: optional ``{HF input name: tf.TensorSpec, keras.InputSpec or
                shape}`` replacing the default specs (fixed shapes, fewer optional inputs).
            **kwargs: LiteRT only: ``quantize="dynamic-int8"`` for int8 weights.

        The ``serving_default`` signature takes HF's input names (``pixel_values``;
        ``input_ids``, ``attention_mask`` and, with more than one token type,
        ``token_type_ids``; ``input_values``, ``attention_mask``) with dynamic batch and length,
        and returns HF's output fields by name. ``d2v-export`` adds validation and copies the
        config and preprocessing files (see ``d2v_tf.export``).

        Examples:

        ```python
        model.export("served")                      # tf.saved_model.load("served")
        model.export("m.tflite", format="litert")   # ai_edge_litert's Interpreter
        ```
        """
        from d2v_tf.export import export_keras

        return export_keras(self, filepath, format, verbose, input_signature, **kwargs)

    # ------------------------------------------------------------------------ helpers
    def num_parameters(self) -> int:
        return self.spec.num_parameters()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each encoder layer in the backward pass (same gradients, less memory):
        ``keras.remat`` on every backend, dropout masks drawn again identically
        (``d2v_tf.checkpointing``). ``gradient_checkpointing_kwargs``: HF's argument, which holds
        torch options; only None or ``{}`` here.

        Examples:
            >>> model.gradient_checkpointing_enable()  # doctest: +SKIP
            >>> model.fit(x, y)  # doctest: +SKIP
        """
        set_gradient_checkpointing(self, True, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        set_gradient_checkpointing(self, False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether ``gradient_checkpointing_enable`` is in effect."""
        return any(encoder.gradient_checkpointing for encoder in checkpointing_encoders(self))

    def _output_flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The call's output switches, each falling back to the config's default."""
        return (
            self._flag(output_attentions, "output_attentions"),
            self._flag(output_hidden_states, "output_hidden_states"),
            self._return_dict_default if return_dict is None else return_dict,
        )

    def _flag(self, value: bool | None, name: str) -> bool:
        return getattr(self.config, name) if value is None else value

    def _finish_with_loss(self, out, labels, return_dict: bool):
        """A head's last step: the loss when labels came with the inputs, then ``finish``."""
        if labels is not None:
            out.loss = self.loss_from_outputs(out, labels)
        return finish(out, return_dict)

    @property
    def _return_dict_default(self) -> bool:
        return self.config.use_return_dict
