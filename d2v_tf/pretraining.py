"""data2vec self-supervised pretraining in Keras 3: student, EMA teacher, regression head.

Twin of ``d2v_torch/pretraining.py``, section for section; the recipe is
``d2v_common.pretrain.data2vec1``. Training is ``compile`` + ``fit`` on inputs alone (no labels)::

    model = TFData2VecVisionForPreTraining(config)         # config.use_mask_token=True
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(pixel_values, batch_size=32, epochs=10)       # or x={"pixel_values": .., "bool_masked_pos": ..}
    model.save_student("ckpt")                              # loads into every head class

Each training step applies the optimizer, then moves the teacher towards the student (EMA)
inside the same compiled step, so it works in graph mode and under ``tf.distribute``: the
teacher update runs in cross-replica context on every replica's copy of the (synchronised)
student, so the teachers stay identical. The loss is normalised by the masked positions of the
global batch (an all-reduce of the count), and Keras sums the replicas' gradients, so the
update is the one for the combined batch. On JAX the step is Keras' stateless one (see
``d2v_tf.backend.jax``): the masks run as host callbacks inside ``jax.jit``, and the teacher and
the update counter come back through the step's returned state. ``fit`` logs ``loss``, ``target_var`` and
``pred_var`` each step and warns (``TargetCollapseWarning``) when the targets collapse.
"""

from __future__ import annotations

import logging
import os
import warnings

import keras
import numpy as np
from keras import ops

from d2v_common.models.audio import feature_lengths
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.checks import check_config_class
from d2v_common.pretrain.data2vec1 import (
    check_masked_tokens_given_together,
    pretraining_patch_grid,
    NORM_EPS,
    SPREAD_EPS,
    Data2VecPreTrainingOutput,
    PretrainingConfig,
    TargetCollapseWarning,
    bert_mask,
    block_mask,
    check_backbone_config,
    check_mask,
    collapse_message,
    resolve,
    span_mask,
)
from d2v_tf.audio import TFData2VecAudioModel
from d2v_tf import backend
from d2v_tf.base import MODEL_REGISTRY, named_variables, unpack_inputs
from d2v_tf.checkpointing import StudentCheckpointing
from d2v_tf.layers import Linear, is_eager
from d2v_tf.text import TFData2VecTextModel
from d2v_tf.vision import TFData2VecVisionModel

logger = logging.getLogger("d2v.pretraining")

# -------------------------------------------------------------------- targets and loss


def layer_norm_f32(x):
    """LayerNorm over the last axis, no affine, float32 (the targets' norms, both generations)."""
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(var + NORM_EPS)


def instance_norm_f32(x):
    """(B, T, C): each row and channel normalised over time, float32."""
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=1, keepdims=True)
    return (x - mean) * ops.rsqrt(var + NORM_EPS)


def build_targets(layers, config):
    """Average of the top-K teacher layers, each normalised (float32)."""
    top = list(layers)[-config.top_k(len(layers)):]
    if config.instance_norm_target_layer:
        top = [instance_norm_f32(x) for x in top]
    if config.layer_norm_target_layer:
        top = [layer_norm_f32(x) for x in top]
    y = sum(ops.cast(x, "float32") for x in top) / len(top)
    if config.layer_norm_targets:
        y = layer_norm_f32(y)
    if config.instance_norm_targets:
        y = instance_norm_f32(y)
    return ops.stop_gradient(y)


def regression_loss(prediction, target, config):
    """Per-position loss (B, T): L2 or smooth-L1 summed over features, times the loss scale."""
    x, y = ops.cast(prediction, "float32"), ops.cast(target, "float32")
    beta = config.loss_beta
    if beta == 0:
        per = ops.square(x - y)
    else:
        d = ops.abs(x - y)
        per = ops.where(d < beta, 0.5 * ops.square(d) / beta, d - 0.5 * beta)
    return ops.sum(per, axis=-1) * config.scale(x.shape[-1])


def masked_spread(values, mask, ctx):
    """Mean over features of the std over masked positions (of every replica), in float64."""
    v = ops.cast(ops.stop_gradient(values), "float64")
    c = v.shape[-1]
    v = ops.reshape(v, (-1, c))
    m = ops.reshape(ops.cast(mask, "float64"), (-1, 1))
    sums = ops.concatenate([ops.sum(m, axis=0), ops.sum(v * m, axis=0), ops.sum(v * v * m, axis=0)], axis=0)
    if ctx is not None:
        sums = backend.all_reduce_sum(ctx, sums)
    n, s, ss = sums[0], sums[1 : 1 + c], sums[1 + c :]
    var = (ss - s * s / n) / (n - 1)
    return ops.cast(ops.mean(ops.sqrt(ops.maximum(var, 0.0) + SPREAD_EPS)), "float32")


def _numpy_mask(make, inputs, shape):
    """A mask from a ``d2v_common`` numpy generator, also inside a traced graph."""
    return backend.numpy_call(make, inputs, ["bool"], [shape])[0]



# ------------------------------------------------------------------------------ base


class PretrainingMonitor(keras.callbacks.Callback):
    """Logs the step's loss, target_var and pred_var (logger ``d2v.pretraining``, INFO) and
    warns when the targets collapse. ``fit`` adds one unless given."""

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "target_var" not in logs:
            return
        model = self.model
        tv, pv = float(logs["target_var"]), float(logs["pred_var"])
        updates = int(ops.convert_to_numpy(model.num_updates))
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "data2vec %s update %d: loss (epoch mean) %.6g target_var %.4g pred_var %.4g",
                model.modality, updates, float(logs["loss"]), tv, pv,
            )
        if updates >= model.pretraining_config.var_check_after:
            message = collapse_message(tv, pv, model.pretraining_config)
            if message:
                logger.warning(message)
                warnings.warn(message, TargetCollapseWarning, stacklevel=2)


class _TFData2VecForPreTraining(StudentCheckpointing, backend.LayerHooks, backend.PretrainingSteps, keras.Model):
    """What the three modalities share: the teacher, the EMA, the loss, the training step.

    Subclasses set ``modality``, ``base_model_prefix``, ``backbone_class`` and write ``call``
    (masks, student and teacher passes), ending in ``self._finish``.
    """

    # HF-style class name of a concrete wrapper (d2v_common.models.registry.PRETRAINING_ARCHITECTURES)
    architecture = ""
    modality = ""
    base_model_prefix = ""
    backbone_class: type = keras.Model
    config_class: type = object

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY.register(cls)  # the concrete wrappers, beside the model classes

    def __init__(self, config, pretraining_config=None, seed: int | None = None, **kwargs):
        check_config_class(type(self).__name__, config, self.config_class)
        super().__init__(**kwargs)
        self.config = config
        self.pretraining_config = resolve(pretraining_config, self.modality)
        check_backbone_config(config, self.pretraining_config)
        setattr(self, self.base_model_prefix, self._backbone(name=self.base_model_prefix))
        self.teacher = self._backbone(name="teacher")
        self.teacher.load_arrays(self.student.state_arrays())
        self.teacher.trainable = False
        hidden = config.hidden_size
        self.regression_head = Linear(hidden, hidden, name="regression_head")
        init = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        kernel = init.normal(0.0, config.initializer_range, (hidden, hidden)).astype("float32")
        self.regression_head.kernel.assign(kernel)
        self.num_updates = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="num_updates"
        )
        seed = int(np.random.randint(0, 2**31 - 1)) if seed is None else seed
        self.rng = np.random.default_rng(seed)  # the masks drawn when none are given
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # masks may come from numpy inside the step: XLA cannot compile that on TensorFlow
        self.supports_jit = backend.NUMPY_CALLBACKS_COMPILE
        for layer in self._flatten_layers():  # every weight exists already: nothing to build
            layer.built = True

    def _backbone(self, name: str):
        return self.backbone_class(self.config, name=name)

    @property
    def student(self):
        return getattr(self, self.base_model_prefix)

    # The student trains; the teacher runs in inference mode (nothing to recompute).
    def get_config(self) -> dict:
        return {"name": self.name, "config": self.config.to_dict(), "pretraining_config": self.pretraining_config.to_dict()}

    @classmethod
    def from_config(cls, config: dict):
        data = dict(config)
        model_config = cls.config_class.from_dict(data.pop("config"))
        return cls(model_config, PretrainingConfig.from_dict(data.pop("pretraining_config")), **data)

    # ------------------------------------------------------------------- teacher EMA
    def ema_update(self):
        """teacher <- tau * teacher + (1 - tau) * student, tau from the schedule at the update
        count (which this increments); for custom loops, after ``optimizer.apply``. Returns tau."""
        return backend.cross_replica(self._ema_merge)

    def _tau(self, step):
        c = self.pretraining_config
        if c.ema_decay == c.ema_end_decay or c.ema_anneal_end_step <= 0:
            return ops.convert_to_tensor(c.ema_end_decay, "float64")
        frac = ops.minimum(ops.cast(step, "float64") / c.ema_anneal_end_step, 1.0)
        return c.ema_decay + (c.ema_end_decay - c.ema_decay) * frac

    def _ema_merge(self, strategy):
        step = ops.convert_to_tensor(self.num_updates.value) + 1
        tau = self._tau(step)
        keep, take = ops.cast(tau, "float32"), ops.cast(1.0 - tau, "float32")
        student = named_variables(self.student)
        for name, t in named_variables(self.teacher).items():
            backend.update_variable(strategy, t, lambda tv, sv: keep * tv + take * sv, student[name].value)
        backend.update_variable(strategy, self.num_updates, lambda v: v + 1)
        return tau

    # -------------------------------------------------------------------- the loss
    def _finish(self, student_hidden, target, mask, return_dict):
        """Regression head, loss over the masked positions (of the global batch), statistics."""
        prediction = self.regression_head(student_hidden)
        per_position = regression_loss(prediction, target, self.pretraining_config)
        maskf = ops.cast(mask, per_position.dtype)
        ctx = backend.replica_context()
        count = ops.sum(maskf)
        if ctx is not None:  # Keras sums the replicas' gradients: divide by the global count
            count = backend.all_reduce_sum(ctx, count)
        loss = ops.sum(per_position * maskf) / count
        target_var = masked_spread(target, mask, ctx)
        pred_var = masked_spread(prediction, mask, ctx)
        out = Data2VecPreTrainingOutput(loss, target_var, pred_var, ops.cast(mask, "bool"), prediction, target)
        return out if return_dict is not False else out.to_tuple()

    def _teacher_layers(self, out) -> list:
        if self.pretraining_config.target_layer == "ffn":
            return list(out.ffn_states)
        return list(out.hidden_states[1:])

    # ------------------------------------------------------------------ Keras steps
    @property
    def metrics(self):
        return [self.loss_tracker]

    def _logs(self, out, tau=None):
        ctx = backend.replica_context()
        loss = backend.all_reduce_sum(ctx, out.loss) if ctx is not None else out.loss
        self.loss_tracker.update_state(loss)
        logs = {"loss": self.loss_tracker.result(), "target_var": out.target_var, "pred_var": out.pred_var}
        if tau is not None:
            logs["tau"] = ops.cast(tau, "float32")
        return logs

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if not any(isinstance(c, PretrainingMonitor) for c in callbacks):
            callbacks.append(PretrainingMonitor())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Every weight exists from the constructor on, so a first batch has nothing to build.
        # Under a strategy Keras would average that batch across replicas first, which fails
        # for boolean masks, and for dict inputs under MultiWorkerMirroredStrategy. (Keras
        # internals: compiled metrics or a compiled loss still take Keras' path.)
        if getattr(self, "_compile_metrics", None) is not None or getattr(self, "_compile_loss", None) is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=())


    def export(
        self, filepath, format: str = "tf_saved_model", verbose: bool | None = None, input_signature=None, **kwargs
    ):
        """Export the student backbone (``model.student.export``): the teacher, the regression
        head and the loss exist for training only, so a serving artifact holds the encoder."""
        return self.student.export(filepath, format, verbose, input_signature, **kwargs)

    # ----------------------------------------------------------------- checkpoints
    def save_student(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The student as an ordinary base-model checkpoint: every head class of the family
        loads it for fine-tuning (its head listed as new), in either framework."""
        return self.student.save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, pretraining_config=None, seed: int | None = None, **kwargs):
        """Continue pretraining from a checkpoint (a directory or a hub id; ``kwargs`` as the
        backbone's ``from_pretrained``, hub keywords included): student and teacher start from its weights."""
        start = cls.backbone_class.from_pretrained(path, **kwargs)
        model = cls(start.config, pretraining_config, seed=seed)
        arrays = start.state_arrays()
        model.student.load_arrays(arrays)
        model.teacher.load_arrays(arrays)
        return model

    def pretraining_arrays(self) -> dict[str, np.ndarray]:
        """Every weight as canonical (PyTorch-layout) numpy arrays: ``<prefix>.*`` (student),
        ``teacher.*``, ``regression_head.weight`` (out, in) / ``.bias``."""
        out = {f"{self.base_model_prefix}.{k}": v for k, v in self.student.state_arrays().items()}
        out.update({f"teacher.{k}": v for k, v in self.teacher.state_arrays().items()})
        out["regression_head.weight"] = np.asarray(self.regression_head.kernel.numpy()).T.copy()
        out["regression_head.bias"] = np.asarray(self.regression_head.bias.numpy()).copy()
        return out

    def load_pretraining_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        self.student.load_arrays(part(f"{self.base_model_prefix}."))
        self.teacher.load_arrays(part("teacher."))
        hidden = self.config.hidden_size
        weight = np.asarray(arrays["regression_head.weight"], np.float32)
        bias = np.asarray(arrays["regression_head.bias"], np.float32)
        if weight.shape != (hidden, hidden) or bias.shape != (hidden,):
            raise ValueError(
                f"regression_head: got shapes {weight.shape}, {bias.shape}, expected ({hidden}, {hidden}), ({hidden},)"
            )
        self.regression_head.kernel.assign(weight.T)
        self.regression_head.bias.assign(bias)


def _mask_input(mask, shape, name):
    mask = ops.convert_to_tensor(mask)
    check_mask(name, tuple(mask.shape), shape, str(mask.dtype), ops.convert_to_numpy(mask) if is_eager(mask) else None)
    return ops.cast(mask, "bool")


def _static(shape_entry):
    return None if shape_entry is None else int(shape_entry)


# ----------------------------------------------------------------------------- audio


class TFData2VecAudioForPreTraining(_TFData2VecForPreTraining):
    """Student sees frames masked with the learned ``masked_spec_embed`` (spans); targets are
    instance-normalised FFN outputs of the teacher's top layers; L2 loss scaled by 1/sqrt(D)."""

    architecture = "Data2VecAudioForPreTraining"
    modality = "audio"
    base_model_prefix = "data2vec_audio"
    backbone_class = TFData2VecAudioModel
    config_class = Data2VecAudioConfig

    @unpack_inputs
    @document_inputs("Data2VecAudioForPreTraining")
    def call(self, input_values=None, attention_mask=None, mask_time_indices=None, return_dict=None, training=False):
        input_values = ops.convert_to_tensor(input_values)
        if input_values.shape[-1] is None:
            raise ValueError("audio pretraining needs a static number of samples per batch")
        batch = _static(input_values.shape[0])
        frames = int(feature_lengths(self.config, int(input_values.shape[-1]), add_adapter=False))
        lengths = None
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
            samples = ops.sum(ops.cast(attention_mask, "int32"), axis=-1)
            lengths = feature_lengths(self.config, samples, add_adapter=False)
        if mask_time_indices is None:
            config = self.pretraining_config

            def make(b, lens):
                return span_mask(config, int(b), frames, None if lens.size == 0 else lens, self.rng)

            lens_in = lengths if lengths is not None else ops.zeros((0,), "int32")
            mask_time_indices = _numpy_mask(make, [ops.shape(input_values)[0], lens_in], (batch, frames))
        mask = _mask_input(mask_time_indices, (batch, frames), "mask_time_indices")
        student = self.student(
            input_values, attention_mask=attention_mask, mask_time_indices=mask, return_dict=True, training=training
        )
        out = self.teacher(
            input_values, attention_mask=attention_mask, return_dict=True, output_hidden_states=True,
            output_ffn_states=True, training=False,
        )
        target = build_targets(self._teacher_layers(out), self.pretraining_config)
        if lengths is not None:  # padded frames are never in the loss
            mask = ops.logical_and(mask, ops.arange(frames)[None, :] < ops.cast(lengths, "int32")[:, None])
        return self._finish(student.last_hidden_state, target, mask, return_dict)


# ------------------------------------------------------------------------------ text


class TFData2VecTextForPreTraining(_TFData2VecForPreTraining):
    """Student sees BERT-style corrupted tokens; targets are layer-normalised FFN outputs of the
    teacher's top layers on the clean tokens; smooth-L1 (beta 4) on the selected tokens."""

    architecture = "Data2VecTextForPreTraining"
    modality = "text"
    base_model_prefix = "data2vec_text"
    backbone_class = TFData2VecTextModel
    config_class = Data2VecTextConfig

    def _backbone(self, name: str):
        return TFData2VecTextModel(self.config, add_pooling_layer=False, name=name)  # the pooler gets no gradient

    @unpack_inputs
    @document_inputs("Data2VecTextForPreTraining")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, masked_input_ids=None,
             masked_positions=None, return_dict=None, training=False):
        input_ids = ops.convert_to_tensor(input_ids)
        check_masked_tokens_given_together(masked_input_ids, masked_positions)
        shape = tuple(_static(d) for d in input_ids.shape)
        if masked_input_ids is None:
            config, text_config = self.pretraining_config, self.config

            def make(ids, am):
                corrupted, selected = bert_mask(config, text_config, ids, None if am.size == 0 else am, self.rng)
                return corrupted.astype(ids.dtype), selected

            am = ops.zeros((0,), input_ids.dtype) if attention_mask is None else ops.convert_to_tensor(attention_mask)
            masked_input_ids, masked_positions = backend.numpy_call(
                make, [input_ids, ops.cast(am, input_ids.dtype)], [input_ids.dtype, "bool"], [shape, shape]
            )
        masked_input_ids = ops.convert_to_tensor(masked_input_ids)
        check_mask("masked_input_ids", tuple(masked_input_ids.shape), shape, "int")
        mask = _mask_input(masked_positions, shape, "masked_positions")
        student = self.student(
            masked_input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True,
            training=training,
        )
        out = self.teacher(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True,
            output_hidden_states=True, output_ffn_states=True, training=False,
        )
        target = build_targets(self._teacher_layers(out), self.pretraining_config)
        return self._finish(student.last_hidden_state, target, mask, return_dict)


# ---------------------------------------------------------------------------- vision


class TFData2VecVisionForPreTraining(_TFData2VecForPreTraining):
    """Student sees patches replaced by the mask token (blocks); targets are layer-normalised
    block outputs of the teacher's top layers; smooth-L1 (beta 2) on the masked patches."""

    architecture = "Data2VecVisionForPreTraining"
    modality = "vision"
    base_model_prefix = "data2vec_vision"
    backbone_class = TFData2VecVisionModel
    config_class = Data2VecVisionConfig

    @unpack_inputs
    @document_inputs("Data2VecVisionForPreTraining")
    def call(self, pixel_values=None, bool_masked_pos=None, return_dict=None, training=False):
        pixel_values = ops.convert_to_tensor(pixel_values)
        grid = pretraining_patch_grid(self.config, tuple(pixel_values.shape))
        batch = _static(pixel_values.shape[0])
        if bool_masked_pos is None:
            config = self.pretraining_config
            bool_masked_pos = _numpy_mask(
                lambda b: block_mask(config, int(b), grid, self.rng), [ops.shape(pixel_values)[0]],
                (batch, grid[0] * grid[1]),
            )
        mask = _mask_input(bool_masked_pos, (batch, grid[0] * grid[1]), "bool_masked_pos")
        student = self.student(pixel_values, bool_masked_pos=mask, return_dict=True, training=training)
        out = self.teacher(pixel_values, output_hidden_states=True, return_dict=True, training=False)
        target = build_targets([h[:, 1:] for h in out.hidden_states[1:]], self.pretraining_config)
        return self._finish(student.last_hidden_state[:, 1:], target, mask, return_dict)


__all__ = [
    "PretrainingMonitor",
    "TFData2VecAudioForPreTraining",
    "TFData2VecTextForPreTraining",
    "TFData2VecVisionForPreTraining",
    "build_targets",
    "instance_norm_f32",
    "layer_norm_f32",
    "regression_loss",
]
