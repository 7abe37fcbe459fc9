"""data2vec 2.0 pretraining in Keras 3: student, conv decoder, EMA teacher, multi-mask loss.

Twin of ``d2v_torch/data2vec2_pretraining.py``, section for section; the recipe, the config,
the checkpoint reading and the checks are ``d2v_common.pretrain.data2vec2``. The step is
upstream fairseq's ``Data2VecMultiModel.forward``: the student's front end runs once, its output
is cloned ``clone_batch`` times, each clone's masked positions are left out of the transformer,
the decoder fills them back (zeros) and regresses the teacher's targets there.

Leaving positions out takes a data-dependent length. When the mask holds values (an eager
call: any backend's ``model(...)``, PyTorch's ``fit``) the masked positions are removed, as
upstream. Inside a traced step (TensorFlow's ``fit`` graph, ``jax.jit``) the lengths must be
static, so every position stays and the masked ones are hidden from attention as keys: the
kept positions see exactly what they would after removal (attention is the only place tokens
meet), at the cost of running the masked positions through the encoder.

Training is ``compile`` + ``fit`` on inputs alone::

    model = TFData2Vec2AudioForPreTraining.from_pretrained("checkpoint.pt")   # fairseq, a saved folder, a hub id
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    model.fit({"input_values": x, "attention_mask": am}, batch_size=8)     # EMA after each optimizer step
    model.save_pretrained("run")                                           # student, decoder and teacher
    model.save_student("encoder")                                          # loads in TFData2Vec2AudioModel
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from keras import ops

from d2v_common import data2vec2 as D
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.models.checks import check_config_class
from d2v_common.models.docstrings import document_inputs
from d2v_common.pretrain import data2vec2 as P
from d2v_common.pretrain.data2vec2 import Data2Vec2PreTrainingOutput, Data2Vec2PretrainingConfig
from d2v_common.spec import layouts
from d2v_tf import backend
from d2v_tf.base import MODEL_REGISTRY, unpack_inputs
from d2v_tf.checkpointing import StudentCheckpointing
from d2v_tf.data2vec2 import TFData2Vec2AudioModel, TFData2Vec2TextModel, TFData2Vec2VisionModel
from d2v_tf.layers import Activation, Dropout, Layer, LayerNorm, Linear, is_eager, padding_bias
from d2v_tf.pretraining import instance_norm_f32, layer_norm_f32

NORM_EPS = 1e-5  # torch's F.batch_norm default, as upstream's targets

# ----------------------------------------------------------------------------- decoder


class TFData2Vec2DecoderConv(Layer):
    """Grouped convolution, channels-last, 1-D (B, T, C) or 2-D (B, H, W, C), "same" length
    (odd kernels pad k//2; even ones pad k//2 and drop the last step, as upstream)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, groups: int, two_d: bool, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.two_d, self.k = groups, two_d, kernel
        shape = (kernel, kernel, in_dim // groups, out_dim) if two_d else (kernel, in_dim // groups, out_dim)
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(out_dim,), initializer="zeros", name="bias")

    def call(self, x):
        p = self.k // 2
        kernel = ops.cast(self.kernel, x.dtype)
        if not self.two_d:
            x = ops.pad(x, [[0, 0], [p, p], [0, 0]])
            y = backend.conv1d(x, kernel, 1, 1, self.groups)
            return (y[:, :-1] if self.k % 2 == 0 else y) + ops.cast(self.bias, y.dtype)
        x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        # one conv per group: grouped 2-D convs differ between backends (and TF's CPU gradients)
        xs = ops.split(x, self.groups, axis=-1)
        ks = ops.split(kernel, self.groups, axis=-1)
        y = ops.concatenate([backend.conv2d(a, k, (1, 1), (1, 1)) for a, k in zip(xs, ks)], axis=-1)
        return (y[:, :-1, :-1] if self.k % 2 == 0 else y) + ops.cast(self.bias, y.dtype)


class TFData2Vec2DecoderLayer(Layer):
    """Grouped conv -> LayerNorm over channels (no affine) -> GELU."""

    def __init__(self, pcfg: Data2Vec2PretrainingConfig, in_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.conv = TFData2Vec2DecoderConv(in_dim, pcfg.decoder_dim, pcfg.decoder_kernel, pcfg.decoder_groups,
                                           pcfg.modality == "vision")
        self.norm = LayerNorm(pcfg.decoder_dim, affine=False)
        self.activation = Activation("gelu")

    def call(self, x):
        return self.activation(self.norm(self.conv(x)))


class TFData2Vec2Decoder(Layer):
    """fairseq Decoder1d / Decoder2d: conv layers (residual between equal widths with
    ``decoder_residual``) -> projection Linears (GELU between) back to ``hidden_size``.
    (B, T, D) -> (B, T, D); images as the (grid, grid) patch map."""

    def __init__(self, pcfg: Data2Vec2PretrainingConfig, hidden: int, grid: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid
        self.residual = pcfg.decoder_residual
        self.layers = [TFData2Vec2DecoderLayer(pcfg, hidden if i == 0 else pcfg.decoder_dim)
                       for i in range(pcfg.decoder_layers)]
        self.projection = [Linear(i, o) for i, o in pcfg.projection_dims(hidden)]
        self.gelu = Activation("gelu")

    def call(self, x):
        b, t, c = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        if self.grid is not None:
            x = ops.reshape(x, (b, self.grid, self.grid, c))
        residual = x
        for layer in self.layers:
            x = layer(x)
            if self.residual and residual.shape[-1] == x.shape[-1]:
                x = x + residual
            residual = x
        x = ops.reshape(x, (b, t, x.shape[-1]))
        for i, proj in enumerate(self.projection):
            x = proj(self.gelu(x) if i else x)
        return x

    def arrays(self, value_of) -> dict[str, np.ndarray]:
        """Canonical (PyTorch-layout) arrays under ``decoder.*``; ``value_of(variable)`` reads one
        variable (its value, or its gradient)."""
        out = {}
        for i, layer in enumerate(self.layers):
            kernel = np.asarray(value_of(layer.conv.kernel))
            perm = (3, 2, 0, 1) if kernel.ndim == 4 else (2, 1, 0)  # (kh, kw, in, out) -> (out, in, kh, kw)
            out[f"decoder.layers.{i}.conv.weight"] = np.ascontiguousarray(kernel.transpose(perm))
            out[f"decoder.layers.{i}.conv.bias"] = np.array(value_of(layer.conv.bias))
        for j, proj in enumerate(self.projection):
            out[f"decoder.projection.{j}.weight"] = np.ascontiguousarray(np.asarray(value_of(proj.kernel)).T)
            out[f"decoder.projection.{j}.bias"] = np.array(value_of(proj.bias))
        return out

    def load(self, arrays: dict[str, np.ndarray], shapes: dict[str, tuple]) -> None:
        """Assign canonical ``decoder.*`` arrays (shapes checked against ``shapes``)."""
        for name, shape in shapes.items():
            P.check_decoder_shape(name, np.shape(arrays[name]), shape)
        for i, layer in enumerate(self.layers):
            weight = np.asarray(arrays[f"decoder.layers.{i}.conv.weight"], np.float32)
            perm = (2, 3, 1, 0) if weight.ndim == 4 else (2, 1, 0)
            layer.conv.kernel.assign(np.ascontiguousarray(weight.transpose(perm)))
            layer.conv.bias.assign(np.asarray(arrays[f"decoder.layers.{i}.conv.bias"], np.float32))
        for j, proj in enumerate(self.projection):
            proj.kernel.assign(np.ascontiguousarray(np.asarray(arrays[f"decoder.projection.{j}.weight"], np.float32).T))
            proj.bias.assign(np.asarray(arrays[f"decoder.projection.{j}.bias"], np.float32))


# ----------------------------------------------------------------------- encoder passes


def _block(layer, x, bias, end_of_block: bool, training):
    """One ``TFData2Vec2Layer`` step, also returning upstream's target tensor: the FFN output
    (``end_of_block_targets=False``) or the block output."""
    if layer.pre_norm:
        attn, _ = layer.attention(layer.layer_norm(x), bias=bias, training=training)
        x = x + attn
        r = t = layer.feed_forward(layer.final_layer_norm(x), training=training)
        x = r + layer.post_mlp_dropout(t, training=training)
    else:
        attn, _ = layer.attention(x, bias=bias, training=training)
        x = layer.layer_norm(x + attn)
        t = layer.feed_forward(x, training=training)
        x = layer.final_layer_norm(x + layer.post_mlp_dropout(t, training=training))
    return x, (x if end_of_block else t)


def _layer_biases(encoder, alibi, count: int, heads: int):
    """Per layer: the (B or 1, H, T, T) ALiBi bias times its clamped scale (zero past the ALiBi heads)."""
    if alibi is None:
        return [None] * count
    scales = ops.maximum(ops.cast(encoder.alibi_scale, "float32"), 0.0)  # (L or 1, 1, Ha or 1, 1, 1)
    out = []
    for i in range(count):
        bias = alibi * scales[i if scales.shape[0] > 1 else 0]
        pad = heads - bias.shape[1]
        out.append(ops.pad(bias, [[0, 0], [0, pad], [0, 0], [0, 0]]) if pad else bias)
    return out


def prepend_extra_tokens(encoder, x, keep=None, alibi=None):
    """The learned extra tokens (the image CLS) in front of ``x``; ``keep`` and the (B or 1, H,
    T, T) ALiBi bias grow to cover them (always kept, no bias)."""
    n = encoder.config.num_extra_tokens
    if n:
        tokens = ops.broadcast_to(ops.cast(encoder.extra_tokens, x.dtype), (ops.shape(x)[0], n, x.shape[-1]))
        x = ops.concatenate([tokens, x], axis=1)
        if keep is not None:
            keep = ops.pad(ops.cast(keep, "int32"), [[0, 0], [n, 0]], constant_values=1)
        if alibi is not None:
            alibi = ops.pad(alibi, [[0, 0], [0, 0], [n, 0], [n, 0]])
    return x, keep, alibi


def run_encoder(context, main, x, keep, alibi, end_of_block: bool = False, training=False, main_training=None):
    """Extra tokens, context LayerNorm and prenet layers of ``context``'s encoder (``training``),
    then the main layers (and final LayerNorm) of ``main``'s (``main_training``, default
    ``training``): ``(output, [target tensor of each main layer])``. ``keep``: (B, T) keys that
    may be attended to, or None; ``alibi``: unscaled (B or 1, H_alibi, T, T) or None."""
    enc, top = context.encoder, main.encoder
    main_training = training if main_training is None else main_training
    x, keep, alibi = prepend_extra_tokens(enc, x, keep, alibi)
    pad = None if keep is None else padding_bias(keep)
    layers = [*enc.prenet_layers, *top.layers]
    biases = _layer_biases(enc, alibi, len(layers), context.config.num_attention_heads)
    if enc.layer_norm is not None:
        x = enc.layer_norm(x)
    targets = []
    for i, layer in enumerate(layers):
        bias = pad if biases[i] is None else (biases[i] if pad is None else biases[i] + pad)
        is_main = i >= len(enc.prenet_layers)
        owner = top if is_main else enc  # its encoder's call_layer: a seeded block, remat when checkpointing

        def block(x, bias=None, training=False, layer=layer):
            return _block(layer, x, bias, end_of_block, training)

        x, t = owner.call_layer(block, x, dict(bias=bias), main_training if is_main else training)
        if is_main:
            targets.append(t)
    if top.final_layer_norm is not None:
        x = top.final_layer_norm(x)
    return x, targets


def _batch_norm(x):
    """(B, T, C): each channel normalised over batch and time (batch statistics), float32."""
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=(0, 1), keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=(0, 1), keepdims=True)
    return (x - mean) * ops.rsqrt(var + NORM_EPS)


def make_targets(layers, pcfg: Data2Vec2PretrainingConfig):
    """Average of the top-k teacher layers (B, T, D; all of them when k exceeds the depth, as
    upstream), normalised as configured (float32)."""
    top = list(layers)[-pcfg.average_top_k_layers:]
    if pcfg.batch_norm_target_layer:
        top = [_batch_norm(t) for t in top]
    if pcfg.instance_norm_target_layer:
        top = [instance_norm_f32(t) for t in top]
    if pcfg.layer_norm_target_layer:
        top = [layer_norm_f32(t) for t in top]
    y = ops.cast(top[0], "float32")
    for t in top[1:]:
        y = y + ops.cast(t, "float32")
    y = y / len(top)
    if pcfg.layer_norm_targets:
        y = layer_norm_f32(y)
    if pcfg.instance_norm_targets:
        y = instance_norm_f32(y)
    return y


def regression_loss(x, y, pcfg: Data2Vec2PretrainingConfig):
    """Element-wise L2 (or smooth-L1 with ``loss_beta``) times ``loss_scale`` (None: 1/sqrt(D))."""
    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    if pcfg.loss_beta == 0:
        loss = ops.square(x - y)
    else:
        d = ops.abs(x - y)
        loss = ops.where(d < pcfg.loss_beta, 0.5 * ops.square(d) / pcfg.loss_beta, d - 0.5 * pcfg.loss_beta)
    return loss * pcfg.loss_scale_for(x.shape[-1])


def _gather_rows(x, index: np.ndarray):
    """x (B, T, D), index (B, K) numpy -> (B, K, D)."""
    return ops.take_along_axis(x, ops.convert_to_tensor(np.repeat(index[..., None], x.shape[-1], axis=2)), axis=1)


def _full_alibi(config, length: int) -> np.ndarray | None:
    """(H_alibi, T, T) unscaled ALiBi bias (float32, as upstream), or None without ALiBi."""
    if not config.use_alibi:
        return None
    if isinstance(config, Data2Vec2VisionConfig):
        return D.image_alibi_bias(config)
    return D.alibi_slopes(config.alibi_heads)[:, None, None] * D.alibi_distances_1d(length)[None]


# -------------------------------------------------------------------------------- base


class _TFData2Vec2ForPreTraining(StudentCheckpointing, backend.LayerHooks, backend.PretrainingSteps, keras.Model):
    """What the three modalities share. Subclasses give the front end (``_local``), what is
    added before the context encoder (``_positions``, ``_pos_conv``) and ``call`` (inputs ->
    ``self._step``). The train step (``d2v_tf.backend``'s ``PretrainingSteps``) applies the
    optimizer, then ``ema_update``, inside the compiled step."""

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
        pcfg = P.resolve_pretraining_config(pretraining_config, self.modality, config)
        self.config = config
        self.pretraining_config = pcfg
        setattr(self, self.base_model_prefix, self.backbone_class(config, name=self.base_model_prefix))
        grid = config.grid_size if self.modality == "vision" else None
        self.decoder = TFData2Vec2Decoder(pcfg, config.hidden_size, grid, name="decoder")
        init = np.random.default_rng(np.random.randint(0, 2**31 - 1) if seed is None else seed)
        shapes = P.decoder_shapes(pcfg, config.hidden_size)
        self.decoder.load({k: (init.normal(0, 0.02, s) if k.endswith("weight") else np.zeros(s)).astype(np.float32)
                           for k, s in shapes.items()}, shapes)
        self.decoder_input_dropout = Dropout(pcfg.decoder_input_dropout)
        self.noise_seed = keras.random.SeedGenerator(int(init.integers(0, 2**31 - 1)))
        self.teacher = self.backbone_class(config, name="teacher")
        self.teacher.load_arrays(self.student.state_arrays())
        self.teacher.trainable = False
        self.teacher_names = tuple(P.teacher_names(list(self.student.state_arrays()), pcfg))
        self.num_updates = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                           name="num_updates")
        self.last_tau: float | None = None
        self.fairseq_source = None  # names and cfg of the fairseq checkpoint read, if any
        self.rng = np.random.default_rng(np.random.randint(0, 2**31 - 1) if seed is None else seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # drawn masks come from numpy inside the step: XLA cannot compile that on TensorFlow
        self.supports_jit = backend.NUMPY_CALLBACKS_COMPILE
        for layer in self._flatten_layers():  # every weight exists already: nothing to build
            layer.built = True

    @property
    def student(self):
        return getattr(self, self.base_model_prefix)

    @property
    def fairseq_source(self) -> dict | None:
        """The fairseq names and ``cfg.model`` of the checkpoint the model was read from, or None."""
        return self._fairseq_source

    @fairseq_source.setter
    def fairseq_source(self, value: dict | None) -> None:
        # Keras wraps dicts set on a model in tracking containers, which do not pickle (save_fairseq
        # pickles it): keep a plain JSON copy (it is JSON already: names and the printed cfg)
        object.__setattr__(self, "_fairseq_source", None if value is None else json.loads(json.dumps(value)))

    def get_config(self) -> dict:
        return {"name": self.name, "config": self.config.to_dict(), "pretraining_config": self.pretraining_config.to_dict()}

    @classmethod
    def from_config(cls, config: dict):
        data = dict(config)
        model_config = cls.config_class.from_dict(data.pop("config"))
        return cls(model_config, Data2Vec2PretrainingConfig.from_dict(data.pop("pretraining_config")), **data)

    # ------------------------------------------------------------ modality hooks
    def _local(self, backbone, inputs):
        raise NotImplementedError

    def _positions(self, backbone, x):
        return x

    def _pos_conv(self, backbone, x):
        return None

    @property
    def _has_pos_conv(self) -> bool:
        return False

    # ------------------------------------------------------------------- the step
    def _mask(self, precomputed_mask, batch, rows_static, length: int, keep):
        """The (batch * clone_batch, T) bool mask: checked when given, else drawn in numpy from
        the model's seeded Generator (also inside a traced step)."""
        pcfg = self.pretraining_config
        c = pcfg.clone_batch
        if precomputed_mask is None:
            def make(rows, padding):
                return P.sample_mask(pcfg, int(rows), length, None if padding.size == 0 else padding, self.rng)

            padding = ops.zeros((0,), "bool") if keep is None else ops.logical_not(
                ops.repeat(ops.cast(keep, "bool"), c, axis=0))
            return backend.numpy_call(make, [batch * c, padding], ["bool"], [(rows_static, length)])[0]
        mask = ops.convert_to_tensor(precomputed_mask)
        if len(mask.shape) == 3 and mask.shape[1] == c:
            # (batch, clone_batch, T): the layout fit needs (Keras splits every input by its first axis)
            mask = ops.reshape(mask, (-1, mask.shape[2]))
        rows = mask.shape[0] if mask.shape[0] is not None else rows_static
        batch_static = None if rows_static is None else rows_static // c
        if rows is None or batch_static is None:  # a traced batch of unknown size: the rest is checked
            rows = c if rows is None else rows
            batch_static = rows // c if rows % c == 0 else 1
        P.check_precomputed_mask((rows, *tuple(mask.shape)[1:]), str(mask.dtype), batch_static, c, length)
        if is_eager(mask):
            P.check_mask_counts(np.asarray(ops.convert_to_numpy(mask)))
        return mask

    def _step(self, inputs, keep, precomputed_mask, return_dict, training):
        pcfg, cfg = self.pretraining_config, self.config
        c, n = pcfg.clone_batch, cfg.num_extra_tokens
        student = self.student
        local = self._local(student, inputs)
        b, t, d = ops.shape(local)[0], local.shape[1], local.shape[-1]
        if t is None:
            raise ValueError(f"{type(self).__name__} needs a static sequence length per batch")
        static_b = None if local.shape[0] is None else int(local.shape[0])
        mask = self._mask(precomputed_mask, b, None if static_b is None else static_b * c, t, keep)
        maskb = ops.cast(mask, "bool")
        alibi_np = _full_alibi(cfg, t)

        # ---- student: clones, masked positions left out
        x = ops.repeat(self._positions(student, local), c, axis=0)
        keep_c = None if keep is None else ops.repeat(ops.cast(keep, "bool"), c, axis=0)
        maskf = ops.cast(maskb, x.dtype)[..., None]
        pos_in = None
        if self._has_pos_conv:  # the positional convs see the masked sequence (zeros or noise)
            if pcfg.encoder_zero_mask:
                pos_in = x * (1 - maskf)
            else:
                noise = keras.random.normal(ops.shape(x), stddev=pcfg.mask_noise_std, seed=self.noise_seed)
                pos_in = ops.where(maskb[..., None], ops.cast(noise, x.dtype), x)
        if is_eager(maskb):  # removed, as upstream
            m = np.asarray(ops.convert_to_numpy(maskb)).astype(bool)
            # upstream's (unstable) argsort order: with keep_masked_pct it picks the masked
            # positions the student keeps
            ids_shuffle = P.upstream_mask_order(m)
            ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
            kept = P.keep_count(t, int(m[0].sum()), pcfg.keep_masked_pct)
            ids_keep = ids_shuffle[:, :kept]
            xs = _gather_rows(x, ids_keep)
            if pos_in is not None:
                xs = xs + _gather_rows(self._pos_conv(student, pos_in), ids_keep)
            keep_s = None
            if keep_c is not None:
                keep_s = ops.take_along_axis(keep_c, ops.convert_to_tensor(ids_keep), axis=1)
            alibi_s = None
            if alibi_np is not None:  # (B*c, H, K, K): the rows and columns of the kept positions
                alibi_s = ops.convert_to_tensor(
                    np.ascontiguousarray(alibi_np[:, ids_keep[:, :, None], ids_keep[:, None, :]].transpose(1, 0, 2, 3)))
            h, _ = run_encoder(student, student, xs, keep_s, alibi_s, training=training)
        else:  # traced: every position stays; the masked ones are no key of the attention
            visible = ops.logical_not(maskb)
            if pcfg.keep_masked_pct > 0:  # the masked positions upstream's argsort keeps stay visible
                visible = backend.numpy_call(
                    lambda m: P.kept_positions(np.asarray(m, bool), pcfg.keep_masked_pct),
                    [maskb], ["bool"], [tuple(maskb.shape)])[0]
            xs = x if pos_in is None else x + self._pos_conv(student, pos_in)
            keys = visible if keep_c is None else ops.logical_and(visible, keep_c)
            alibi_s = None if alibi_np is None else ops.convert_to_tensor(alibi_np[None])
            h, _ = run_encoder(student, student, xs, keys, alibi_s, training=training)

        # ---- decoder: encoder output back in place, masked slots zero (or noise)
        if pcfg.decoder_input_dropout > 0:  # upstream drops in place: the CLS loss sees it too
            h = self.decoder_input_dropout(h, training=training)
        dx = h[:, n:]
        if is_eager(maskb):
            fill = ops.zeros((ops.shape(dx)[0], t - kept, d), dx.dtype)
            if pcfg.mask_noise_std > 0:
                fill = ops.cast(keras.random.normal(ops.shape(fill), stddev=pcfg.mask_noise_std, seed=self.noise_seed),
                                dx.dtype)
            dx = _gather_rows(ops.concatenate([dx, fill], axis=1), ids_restore)
        else:
            fill = ops.zeros_like(dx)
            if pcfg.mask_noise_std > 0:
                fill = ops.cast(keras.random.normal(ops.shape(dx), stddev=pcfg.mask_noise_std, seed=self.noise_seed),
                                dx.dtype)
            dx = ops.where(visible[..., None], dx, fill)
        if pcfg.add_positions_masked or pcfg.add_positions_all:
            positions = self._positions(student, ops.zeros_like(dx))
            if pcfg.add_positions_masked:
                dx = dx + positions * ops.cast(maskf, dx.dtype)
            if pcfg.add_positions_all:
                dx = dx + positions
        prediction = self.decoder(dx)

        # ---- teacher: the unmasked input, once per sample (no gradient)
        context = student if pcfg.ema_encoder_only else self.teacher
        if pcfg.ema_local_encoder and not pcfg.ema_encoder_only:
            t_local = self._local(self.teacher, inputs)
        else:
            t_local = ops.stop_gradient(local)
        tx = self._positions(context, t_local)
        t_pos = self._pos_conv(context, tx)
        if t_pos is not None:
            tx = tx + t_pos
        t_alibi = None if alibi_np is None else ops.convert_to_tensor(alibi_np[None])
        _, layers = run_encoder(context, self.teacher, tx, keep, t_alibi, pcfg.end_of_block_targets,
                                training=training if pcfg.ema_encoder_only else False, main_training=False)
        target = ops.stop_gradient(make_targets([y[:, n:] for y in layers], pcfg))

        # ---- losses (fairseq's names), normalised by the masked positions (of every replica)
        maskf32 = ops.cast(maskb, "float32")
        sample_size = ops.sum(maskf32)
        ctx = backend.replica_context()
        count = backend.all_reduce_sum(ctx, sample_size) if ctx is not None else sample_size
        losses = {}
        if pcfg.cls_loss > 0:  # weighted by the global count, as in torch: N replicas equal one device
            cls_target = ops.repeat(ops.mean(target, axis=1), c, axis=0)
            losses["cls"] = ops.sum(regression_loss(h[:, n - 1], cls_target, pcfg) * (pcfg.cls_loss * count))
        y = ops.repeat(target, c, axis=0)
        regression = regression_loss(prediction, y, pcfg) * (pcfg.d2v_loss * maskf32[..., None])
        losses[f"{P.FAIRSEQ_MODALITY[self.modality]}_regression"] = ops.sum(regression)
        loss = sum(losses.values()) / count
        out = Data2Vec2PreTrainingOutput(loss, losses, ops.cast(sample_size, "int32"), maskb, prediction, target)
        return out if return_dict is not False else out.to_tuple()

    # ---------------------------------------------------------------- teacher EMA
    def _tau(self, step):
        """``Data2Vec2PretrainingConfig.tau`` on a (possibly traced) update count, float64."""
        pcfg = self.pretraining_config
        start, end = float(pcfg.ema_decay), float(pcfg.ema_end_decay)
        if start == end or pcfg.ema_anneal_end_step <= 0:
            return ops.convert_to_tensor(end if start != end else start, "float64")
        step = ops.cast(step, "float64")
        annealed = end - (end - start) * (1 - step / pcfg.ema_anneal_end_step)
        return ops.where(step >= pcfg.ema_anneal_end_step, ops.convert_to_tensor(end, "float64"), annealed)

    def ema_update(self, step: int | None = None):
        """teacher <- tau * teacher + (1 - tau) * student for the tensors the teacher holds
        (frozen ones copied), after optimizer update ``step`` (default: one more than last time;
        the train step calls it after each optimizer step). Returns tau."""
        if step is not None:
            self.num_updates.assign(int(step) - 1)
        tau = backend.cross_replica(self._ema_merge)
        if is_eager(tau):
            self.last_tau = float(ops.convert_to_numpy(tau))
        return tau

    def _ema_merge(self, strategy):
        step = ops.convert_to_tensor(self.num_updates.value) + 1
        tau = self._tau(step)
        rate = 1.0 - tau  # upstream's EMAModule: mul_(1 - rate), add_(alpha=rate)
        keep, take = ops.cast(1.0 - rate, "float32"), ops.cast(rate, "float32")
        student = self._named_student_variables()
        teacher = self._named_teacher_variables()
        trainable = {id(v) for v in self.student.trainable_variables}
        for name in self.teacher_names:
            s, t = student[name], teacher[name]
            if id(s) in trainable:
                backend.update_variable(strategy, t, lambda tv, sv: keep * tv + take * sv, s.value)
            else:
                backend.update_variable(strategy, t, lambda tv, sv: sv, s.value)
        backend.update_variable(strategy, self.num_updates, lambda v: v + 1)
        return tau

    def _named_student_variables(self) -> dict:
        return _canonical_variables(self.student)

    def _named_teacher_variables(self) -> dict:
        return _canonical_variables(self.teacher)

    # ------------------------------------------------------------------ Keras steps
    @property
    def metrics(self):
        return [self.loss_tracker]

    def _logs(self, out, tau=None):
        ctx = backend.replica_context()
        loss = backend.all_reduce_sum(ctx, out.loss) if ctx is not None else out.loss
        self.loss_tracker.update_state(loss)
        logs = {"loss": self.loss_tracker.result()}
        if tau is not None:
            logs["tau"] = ops.cast(tau, "float32")
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Every weight exists from the constructor on: nothing to build from a first batch (under
        # a strategy Keras would average that batch across replicas, which fails for bool masks).
        if getattr(self, "_compile_metrics", None) is not None or getattr(self, "_compile_loss", None) is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=())

    # ---------------------------------------------------------------- checkpoints
    def canonical_arrays(self, value_of=None) -> dict[str, np.ndarray]:
        """Every weight as canonical (PyTorch-layout) numpy arrays: ``<prefix>.*`` (student),
        ``decoder.*`` and ``teacher.*`` (only what the EMA teacher holds). ``value_of(variable)``
        reads a variable in its Keras layout (default: its value; e.g. a gradient instead)."""
        value_of = value_of or (lambda v: np.asarray(ops.convert_to_numpy(v)))
        student = _canonical_values(self.student, value_of)
        out = {f"{self.base_model_prefix}.{k}": v for k, v in student.items()}
        out.update(self.decoder.arrays(value_of))
        teacher = _canonical_values(self.teacher, value_of, names=self.teacher_names)
        out.update({f"teacher.{k}": teacher[k] for k in self.teacher_names})
        return out

    def pretraining_arrays(self) -> dict[str, np.ndarray]:
        """Every weight as canonical numpy arrays: ``<prefix>.*`` (student), ``decoder.*`` and
        ``teacher.*`` (only what the EMA teacher holds)."""
        return self.canonical_arrays()

    def load_pretraining_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        P.check_pretraining_array_names(type(self).__name__, self.pretraining_arrays(), arrays)
        prefix = self.base_model_prefix + "."
        student = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        self.student.load_arrays(student)
        teacher = dict(student)
        teacher.update({k[len("teacher."):]: v for k, v in arrays.items() if k.startswith("teacher.")})
        self.teacher.load_arrays(teacher)
        self.decoder.load(arrays, P.decoder_shapes(self.pretraining_config, self.config.hidden_size))

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Student, decoder and teacher (``model.safetensors``), the backbone's ``config.json``
        and ``d2v_pretraining.json`` (the recipe, the update count): the folder PyTorch's class
        reads too."""
        return P.save_pretraining_folder(save_directory, self.pretraining_arrays(), self.config,
                                         self.pretraining_config, self.architecture, self._updates(),
                                         self.fairseq_source)

    def _updates(self) -> int:
        return int(ops.convert_to_numpy(self.num_updates))

    def fairseq_names(self) -> dict[str, str]:
        """``{array name: fairseq key}`` for every tensor (the teacher's as ``_ema.<key>``)."""
        return P.fairseq_keys(list(self.student.state_arrays()), self.pretraining_config, self.config)

    def save_fairseq(self, path: str | os.PathLike) -> str:
        """The model as a fairseq ``data2vec_multi`` trainer checkpoint (student, decoder, ``_ema``
        teacher, the source's ``cfg.model``), for a model read from a fairseq checkpoint (or a
        folder saved from one): every tensor under its original key."""
        return P.save_fairseq_pretraining(type(self).__name__, path, self.pretraining_arrays(), self.fairseq_source,
                                          self._updates())

    def save_student(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The student encoder alone, as a ``Data2Vec2*Model`` checkpoint (both frameworks'
        model classes load it)."""
        return self.student.save_pretrained(save_directory, **kwargs)

    def export(self, filepath, format: str = "tf_saved_model", verbose: bool | None = None, input_signature=None,
               **kwargs):
        """Export the student encoder (``model.student.export``): the rest exists for training only."""
        return self.student.export(filepath, format, verbose, input_signature, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        seed: int | None = None,
        *,
        ignore_mismatched_sizes: bool = False,
        check_finite: bool = False,
        checkpoint_format: str | None = None,
        **hub_options,
    ):
        """A fairseq data2vec 2.0 pretraining ``checkpoint.pt`` (or a folder holding one), a
        folder written by ``save_pretrained`` (either framework's) or a hub id holding one:
        student, decoder and EMA teacher as saved, through
        ``d2v_common.pretrain.data2vec2.load_pretraining``. ``seed``: the seed of the masks
        drawn when none is given. ``model.load_report`` is the ``LoadReport``.

        Raises:
            FairseqCheckpointError (a ValueError): a fine-tuned fairseq checkpoint (no decoder,
                no teacher), or options d2v does not implement.
            TypeError: a checkpoint of another modality, or an unknown keyword.
            OSError: a folder without ``d2v_pretraining.json`` (a plain model checkpoint).
        """
        loaded = P.load_pretraining_for(cls, pretrained_model_name_or_path, checkpoint_format,
                                        ignore_mismatched_sizes, check_finite, seed, hub_options)
        model = cls(loaded.config, loaded.pretraining_config, seed=seed)
        model.load_pretraining_arrays(loaded.arrays)
        model.num_updates.assign(loaded.num_updates)
        model.fairseq_source = loaded.fairseq
        model.load_report = loaded.report
        return model


def _canonical_variables(model) -> dict:
    """A backbone's variables by canonical (spec) name."""
    variables = model._keras_variables()
    return {p.name: variables[layouts.keras_name(p)] for p in model.spec.stored()}


def _canonical_values(model, value_of, names=None) -> dict[str, np.ndarray]:
    """A backbone's canonical arrays (``names`` only, when given) from ``value_of(variable)``."""
    variables = model._keras_variables()
    out = {}
    for p in model.spec.stored():
        if names is None or p.name in names:
            out[p.name] = layouts.from_keras_array(p, np.asarray(value_of(variables[layouts.keras_name(p)])))
    return out


# ------------------------------------------------------------------------------ vision


class TFData2Vec2VisionForPreTraining(_TFData2Vec2ForPreTraining):
    """data2vec 2.0 image pretraining: inverse-block-masked patches left out, 2-D conv decoder,
    EMA teacher, CLS loss with ``cls_loss``.

    Args:
        config: the ``Data2Vec2VisionConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given (and of the decoder's initial weights).

    Examples:
    ```python no-run
    model = TFData2Vec2VisionForPreTraining.from_pretrained("checkpoint.pt")
    out = model(pixel_values)                      # masks drawn; or precomputed_mask=(B * clone_batch, N) bool
    model.compile(optimizer=keras.optimizers.AdamW(1e-4)); model.fit(pixel_values, batch_size=8)
    ```
    """

    architecture = "Data2Vec2VisionForPreTraining"
    modality = "vision"
    base_model_prefix = "data2vec2_vision"
    backbone_class = TFData2Vec2VisionModel
    config_class = Data2Vec2VisionConfig

    def _local(self, backbone, pixel_values):
        return backbone.embeddings.patch_embeddings(ops.transpose(pixel_values, (0, 2, 3, 1)))

    def _positions(self, backbone, x):
        table = backbone.embeddings.position_embeddings
        return x if table is None else x + ops.cast(table, x.dtype)

    @unpack_inputs
    @document_inputs("Data2Vec2VisionForPreTraining")
    def call(self, pixel_values=None, precomputed_mask=None, return_dict=None, training=False):
        pixel_values = ops.convert_to_tensor(pixel_values)
        D.check_pixel_values(self.config, tuple(pixel_values.shape), pixel_values.dtype)
        return self._step(pixel_values, None, precomputed_mask, return_dict, training)


# ------------------------------------------------------------------------------- audio


class TFData2Vec2AudioForPreTraining(_TFData2Vec2ForPreTraining):
    """data2vec 2.0 speech pretraining: span-masked frames zeroed for the positional convs, then
    left out; 1-D conv decoder; EMA teacher.

    Args:
        config: the ``Data2Vec2AudioConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given (and of the decoder's initial weights).

    Examples:
    ```python no-run
    model = TFData2Vec2AudioForPreTraining.from_pretrained("checkpoint.pt")
    out = model(input_values, attention_mask)      # out.loss, out.losses, out.mask
    ```
    """

    architecture = "Data2Vec2AudioForPreTraining"
    modality = "audio"
    base_model_prefix = "data2vec2_audio"
    backbone_class = TFData2Vec2AudioModel
    config_class = Data2Vec2AudioConfig

    @property
    def _has_pos_conv(self) -> bool:
        return True

    def _local(self, backbone, input_values):
        return backbone.feature_projection(backbone.feature_extractor(input_values))

    def _pos_conv(self, backbone, x):
        enc = backbone.encoder
        return enc.pos_conv_embed(enc.pos_conv_layer_norm(x) if enc.pos_conv_layer_norm is not None else x)

    @unpack_inputs
    @document_inputs("Data2Vec2AudioForPreTraining")
    def call(self, input_values=None, attention_mask=None, precomputed_mask=None, return_dict=None, training=False):
        input_values = ops.convert_to_tensor(input_values)
        D.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        keep = None
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_values.shape))
            frames = int(D.frame_lengths(self.config, input_values.shape[1]))
            keep = self.student.frame_mask(attention_mask, frames)
        return self._step(input_values, keep, precomputed_mask, return_dict, training)


# -------------------------------------------------------------------------------- text


class TFData2Vec2TextForPreTraining(_TFData2Vec2ForPreTraining):
    """data2vec 2.0 text pretraining: masked tokens left out, 1-D conv decoder, EMA teacher.

    Args:
        config: the ``Data2Vec2TextConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given (and of the decoder's initial weights).

    Examples:
    ```python no-run
    model = TFData2Vec2TextForPreTraining.from_pretrained("checkpoint.pt")
    out = model(input_ids, attention_mask, precomputed_mask=mask)   # mask: (B * clone_batch, T) bool
    ```
    """

    architecture = "Data2Vec2TextForPreTraining"
    modality = "text"
    base_model_prefix = "data2vec2_text"
    backbone_class = TFData2Vec2TextModel
    config_class = Data2Vec2TextConfig

    def _local(self, backbone, input_ids):
        return backbone.embeddings(input_ids)

    @unpack_inputs
    @document_inputs("Data2Vec2TextForPreTraining")
    def call(self, input_ids=None, attention_mask=None, precomputed_mask=None, return_dict=None, training=False):
        input_ids = ops.convert_to_tensor(input_ids)
        if is_eager(input_ids):
            D.check_input_ids(self.config, np.asarray(ops.convert_to_numpy(input_ids)))
        if attention_mask is None:
            keep = ops.not_equal(input_ids, self.config.pad_token_id)
        else:
            attention_mask = ops.convert_to_tensor(attention_mask)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_ids.shape))
            keep = ops.cast(attention_mask, "bool")
        return self._step(input_ids, keep, precomputed_mask, return_dict, training)


__all__ = [
    "TFData2Vec2AudioForPreTraining",
    "TFData2Vec2Decoder",
    "TFData2Vec2TextForPreTraining",
    "TFData2Vec2VisionForPreTraining",
    "make_targets",
    "regression_loss",
    "run_encoder",
]
