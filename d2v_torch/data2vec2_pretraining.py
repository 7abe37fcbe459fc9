"""data2vec 2.0 pretraining in PyTorch: student, conv decoder, EMA teacher, multi-mask loss.

The step is upstream fairseq's ``Data2VecMultiModel.forward`` (see
``d2v_common.pretrain.data2vec2`` for the recipe, the config, the checkpoint reading and the
checks): the student's front end runs once, its output is cloned ``clone_batch`` times, each
clone loses its masked positions before the transformer, the decoder fills them back (zeros)
and regresses the teacher's targets there. The encoder layers are the inference classes'
(``d2v_torch.data2vec2``); only the way they are driven differs (removed positions, a
per-row ALiBi bias, FFN outputs collected for the targets).

A training loop::

    model = Data2Vec2AudioForPreTraining.from_pretrained("checkpoint.pt")   # fairseq, a saved folder, a hub id
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for batch in batches:
        out = model(batch["input_values"], batch["attention_mask"], precomputed_mask=batch["mask"])
        out.loss.backward(); opt.step(); opt.zero_grad()
        model.ema_update()                          # teacher <- EMA of the student
    model.save_pretrained("run")                    # student, decoder and teacher
    model.save_student("encoder")                   # loads in Data2Vec2AudioModel

Under ``DistributedDataParallel`` (``torchrun``) call ``model.ema_update()`` on the wrapped
module after each optimizer step: every rank holds the same student, hence the same teacher.
The loss divides by the masked positions of the global batch (all-reduced, as fairseq's
trainer does), so the averaged gradient is the combined batch's.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from d2v_common import data2vec2 as D
from d2v_common.pretrain import data2vec2 as P
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.pretrain.data2vec2 import Data2Vec2PreTrainingOutput, Data2Vec2PretrainingConfig
from d2v_common.models.docstrings import document_inputs
from d2v_torch.audio import Data2VecAudioConvLayer
from d2v_torch.base import TeacherStudentPretrainingModule, all_reduce_sum, world_size
from d2v_torch.data2vec2 import (
    Data2Vec2AudioModel, Data2Vec2TextModel, Data2Vec2VisionModel, sequence_alibi,
)
from d2v_torch.layers import checkpointed, padding_bias

# ----------------------------------------------------------------------------- decoder


def grouped_conv_channels_last(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a channels-last ``x`` ((B, C, T) or (B, C, H, W) views of time-major /
    (B, H, W, C) memory, as the step's convs get them), run as oneDNN's channels-last 2-D conv
    and returned channels-last. A 1-D conv on such a view takes a slower path (about 2x for
    the audio recipe's positional convs, forward + backward, and mixed gradient layouts
    after it). Same sums up to float32 rounding (oneDNN's blocked order)."""
    if x.device.type != "cpu" or x.dim() != 3:
        return conv(x)
    y = F.conv2d(x.unsqueeze(2), conv.weight.unsqueeze(2), conv.bias, stride=(1, conv.stride[0]),
                 padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups)
    return y.squeeze(2)


def positional_convs(encoder, x: torch.Tensor) -> torch.Tensor:
    """The audio encoder's relative positional convs (``pos_conv_embed`` after its optional
    LayerNorm): (B, T, D) -> (B, T, D), the inference layers' math on channels-last memory."""
    if encoder.pos_conv_layer_norm is not None:
        x = encoder.pos_conv_layer_norm(x)
    x = x.transpose(1, 2)
    for layer in encoder.pos_conv_embed.layers:
        x = grouped_conv_channels_last(layer.conv, x)
        if layer.trim:
            x = x[:, :, : -layer.trim]
        x = layer.activation(layer.layer_norm(x.transpose(1, 2))).transpose(1, 2)
    return x.transpose(1, 2)


def strided_conv_as_matmuls(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a dense conv (no padding or dilation) on a time-major (B, C, T) view, as
    matmuls on views of that memory, returned time-major. Each run of ``stride`` consecutive
    taps reads ``stride`` consecutive frames, which are one row of a (B, T / stride, stride * C)
    view of the memory: one GEMM per such run (one per leftover tap, on a strided view). For the
    audio encoder's 512-channel, kernel 3 / 2, stride 2 layers forward + backward are about 2x
    faster than oneDNN's convolution (its backward especially). Same sums in another order."""
    b, c, t = x.shape
    k, s = conv.kernel_size[0], conv.stride[0]
    out = (t - k) // s + 1
    xt = x.transpose(1, 2)  # (B, T, C), contiguous
    w = conv.weight
    y = None
    for j in range(k // s):  # full runs of s taps
        window = xt[:, j * s: j * s + out * s].reshape(b, out, s * c)
        part = F.linear(window, w[:, :, j * s: (j + 1) * s].transpose(1, 2).reshape(w.shape[0], s * c),
                        conv.bias if y is None else None)
        y = part if y is None else y + part
    for r in range(k // s * s, k):  # leftover taps, one frame each
        part = F.linear(xt[:, r: r + (out - 1) * s + 1: s], w[:, :, r], conv.bias if y is None else None)
        y = part if y is None else y + part
    return y.transpose(1, 2)


def conv_layer_as_matmuls(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for an audio feature encoder's conv layer, its LayerNorm-mode strided conv as
    matmuls on the time-major memory each LayerNorm leaves (``strided_conv_as_matmuls``): no
    layout copies around the convs, GELU's backward gets its gradient in its input's layout, and
    the GEMMs' backward beats oneDNN's conv backward. Other layers (the raw-waveform conv,
    GroupNorm mode) and other devices take the inference path."""
    conv = getattr(layer, "conv", None)
    if (type(layer) is Data2VecAudioConvLayer and x.device.type == "cpu" and conv.in_channels > 1
            and conv.groups == 1 and conv.padding == (0,) and conv.dilation == (1,)):
        x = strided_conv_as_matmuls(conv, x)
        return layer.activation(layer.layer_norm(x.transpose(1, 2))).transpose(1, 2)
    return layer(x)


class Data2Vec2DecoderLayer(nn.Module):
    """Grouped conv (same length: odd kernels pad k//2, even ones drop the last step) ->
    LayerNorm over channels (no affine) -> GELU; 1-D (B, C, T) or 2-D (B, C, H, W)."""

    def __init__(self, pcfg: Data2Vec2PretrainingConfig, in_dim: int):
        super().__init__()
        conv = nn.Conv2d if pcfg.modality == "vision" else nn.Conv1d
        k = pcfg.decoder_kernel
        self.conv = conv(in_dim, pcfg.decoder_dim, k, padding=k // 2, groups=pcfg.decoder_groups)
        self.trim = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = grouped_conv_channels_last(self.conv, x)
        if self.trim:
            x = x[..., :-1] if x.dim() == 3 else x[..., :-1, :-1]
        # LayerNorm and GELU on the channels-last memory (no copy; GELU's backward then gets its
        # gradient in the layout of its input, not the strided slow path)
        return F.gelu(F.layer_norm(x.movedim(1, -1), (x.shape[1],))).movedim(-1, 1)


class Data2Vec2Decoder(nn.Module):
    """fairseq Decoder1d / Decoder2d: conv layers (residual between equal widths with
    ``decoder_residual``) -> projection Linears (GELU between) back to ``hidden_size``.
    (B, T, D) -> (B, T, D); images as the (grid, grid) patch map."""

    def __init__(self, pcfg: Data2Vec2PretrainingConfig, hidden: int, grid: int | None = None):
        super().__init__()
        self.grid = grid
        self.residual = pcfg.decoder_residual
        self.layers = nn.ModuleList(
            [Data2Vec2DecoderLayer(pcfg, hidden if i == 0 else pcfg.decoder_dim) for i in range(pcfg.decoder_layers)]
        )
        self.projection = nn.ModuleList([nn.Linear(i, o) for i, o in pcfg.projection_dims(hidden)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        x = x.transpose(1, 2)
        if self.grid is not None:
            x = x.reshape(b, c, self.grid, self.grid)
        residual = x
        for layer in self.layers:
            x = layer(x)
            if self.residual and residual.shape[1] == x.shape[1]:
                x = x + residual
            residual = x
        x = x.reshape(b, -1, t).transpose(1, 2)
        for i, proj in enumerate(self.projection):
            x = proj(F.gelu(x) if i else x)
        return x


# ----------------------------------------------------------------------- encoder passes


def _block(layer, x, bias, end_of_block: bool):
    """One ``Data2Vec2Layer`` step, also returning upstream's target tensor: the FFN output
    (``end_of_block_targets=False``) or the block output."""
    if layer.pre_norm:
        attn, _ = layer.attention(layer.layer_norm(x), bias)
        x = x + attn
        r = t = layer.feed_forward(layer.final_layer_norm(x))
        x = r + layer.post_mlp_dropout(t)
    else:
        attn, _ = layer.attention(x, bias)
        x = layer.layer_norm(x + attn)
        t = layer.feed_forward(x)
        x = layer.final_layer_norm(x + layer.post_mlp_dropout(t))
    return x, (x if end_of_block else t)


def _layer_biases(encoder, alibi, count: int, heads: int):
    """Per layer: the (B, H, T, T) ALiBi bias times its clamped scale (zero past the ALiBi heads)."""
    if alibi is None:
        return [None] * count
    scales = encoder.alibi_scale.clamp_min(0).to(alibi.dtype)  # (L or 1, 1, Ha or 1, 1, 1)
    out = []
    for i in range(count):
        bias = alibi * scales[i if scales.shape[0] > 1 else 0]
        pad = heads - bias.shape[1]
        out.append(F.pad(bias, (0, 0, 0, 0, 0, pad)) if pad else bias)
    return out


def run_encoder(context, main, x, keep, alibi, end_of_block: bool = False):
    """Extra tokens, context LayerNorm and prenet layers of ``context``'s encoder, then the main
    layers (and final LayerNorm) of ``main``'s: ``(output, [target tensor of each main layer])``.
    ``keep``: (B, T) bool or None; ``alibi``: unscaled (B, H_alibi, T, T) or None."""
    enc, top = context.encoder, main.encoder
    x, keep, alibi = enc.prepend_extra_tokens(x, keep, alibi)
    pad = None if keep is None else padding_bias(keep, x.dtype)
    layers = [*enc.prenet_layers, *top.layers]
    biases = _layer_biases(enc, alibi, len(layers), context.config.num_attention_heads)
    if enc.layer_norm is not None:
        x = enc.layer_norm(x)
    targets = []
    # the student's pass recomputes its layers in backward under gradient_checkpointing_enable()
    recompute = top.gradient_checkpointing and top.training and torch.is_grad_enabled()
    for i, layer in enumerate(layers):
        bias = pad if biases[i] is None else (biases[i] if pad is None else biases[i] + pad)
        if recompute:
            x, t = checkpointed(top, _block, layer, x, bias, end_of_block)
        else:
            x, t = _block(layer, x, bias, end_of_block)
        if i >= len(enc.prenet_layers):
            targets.append(t)
    if top.final_layer_norm is not None:
        x = top.final_layer_norm(x)
    return x, targets


def make_targets(layers, pcfg: Data2Vec2PretrainingConfig) -> torch.Tensor:
    """Average of the top-k teacher layers (B, T, D; all of them when k exceeds the depth, as
    upstream), normalised as configured (float32)."""
    top = list(layers)[-pcfg.average_top_k_layers:]
    if pcfg.instance_norm_target_layer or pcfg.batch_norm_target_layer:
        top = [t.transpose(1, 2) for t in top]
        if pcfg.batch_norm_target_layer:
            top = [F.batch_norm(t.float(), None, None, training=True) for t in top]
        if pcfg.instance_norm_target_layer:
            top = [F.instance_norm(t.float()) for t in top]
        top = [t.transpose(1, 2) for t in top]
    if pcfg.layer_norm_target_layer:
        top = [F.layer_norm(t.float(), t.shape[-1:]) for t in top]
    y = top[0].float()
    for t in top[1:]:
        y = y + t.float()
    y = y / len(top)
    if pcfg.layer_norm_targets:
        y = F.layer_norm(y, y.shape[-1:])
    if pcfg.instance_norm_targets:
        y = F.instance_norm(y.transpose(1, 2)).transpose(1, 2)
    return y


def regression_loss(x: torch.Tensor, y: torch.Tensor, pcfg: Data2Vec2PretrainingConfig,
                    reduction: str = "none") -> torch.Tensor:
    """Element-wise L2 (or smooth-L1 with ``loss_beta``) times ``loss_scale`` (None: 1/sqrt(D));
    ``reduction="sum"``: their sum, reduced inside the loss kernel (no element-wise tensor, and
    the scale applied once to the sum)."""
    x = x.reshape(-1, x.shape[-1]).float()
    y = y.reshape(-1, x.shape[-1])
    if pcfg.loss_beta == 0:
        loss = F.mse_loss(x, y, reduction=reduction)
    else:
        loss = F.smooth_l1_loss(x, y, reduction=reduction, beta=pcfg.loss_beta)
    return loss * pcfg.loss_scale_for(x.shape[-1])


def _row_index(index: torch.Tensor, width: int) -> torch.Tensor:
    """(B, K) positions -> the (B, K, width) index that gather / scatter on dim 1 take."""
    return index[..., None].expand(-1, -1, width)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), index (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, _row_index(index, x.shape[-1]))


def _gather_clone_rows(x: torch.Tensor, index: torch.Tensor, clones: int) -> torch.Tensor:
    """x (B, T, D), index (B * clones, K) -> (B * clones, K, D): row r reads sample r // clones."""
    b, t, d = x.shape
    flat = (torch.arange(index.shape[0], device=index.device) // clones * t)[:, None] + index
    return x.reshape(b * t, d)[flat]


def _gather_alibi(alibi: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) -> (B, H, K, K): the rows and columns of the kept positions."""
    b, h, t, _ = alibi.shape
    k = index.shape[1]
    rows = torch.gather(alibi, 2, index[:, None, :, None].expand(b, h, k, t))
    return torch.gather(rows, 3, index[:, None, None, :].expand(b, h, k, k))


# -------------------------------------------------------------------------------- base


class _Data2Vec2ForPreTraining(TeacherStudentPretrainingModule):
    """What the three modalities share. Subclasses give the front end (``_local``), what is
    added before the context encoder (``_positions``, ``_pos_conv``), the ALiBi base and
    ``forward`` (inputs -> ``self._step``)."""

    def __init__(self, config, pretraining_config=None, seed: int | None = None):
        super().__init__(config)
        pcfg = P.resolve_pretraining_config(pretraining_config, self.modality, config)
        self.config = config
        self.pretraining_config = pcfg
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        grid = config.grid_size if self.modality == "vision" else None
        self.decoder = Data2Vec2Decoder(pcfg, config.hidden_size, grid)
        self.teacher = self.backbone_class(config)
        self.teacher.load_arrays(self.student.state_arrays())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.teacher_names = P.teacher_names(list(self.student.state_dict()), pcfg)
        self.fairseq_source: dict | None = None  # names and cfg of the fairseq checkpoint read, if any
        self._start_ema_count_and_mask_rng(seed)

    # ------------------------------------------------------------ modality hooks
    def _local(self, backbone, inputs) -> torch.Tensor:
        raise NotImplementedError

    def _positions(self, backbone, x: torch.Tensor) -> torch.Tensor:
        return x

    def _pos_conv(self, backbone, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def _alibi(self, length: int, device) -> torch.Tensor | None:
        return sequence_alibi(self.config, length, device) if self.config.use_alibi else None

    # ------------------------------------------------------------------- the step
    def _mask(self, precomputed_mask, batch: int, length: int, keep, device) -> torch.Tensor:
        c = self.pretraining_config.clone_batch
        if precomputed_mask is None:  # drawn as upstream does, from the model's seeded Generator
            padding = None if keep is None else (~keep).repeat_interleave(c, 0).cpu().numpy()
            mask = P.sample_mask(self.pretraining_config, batch * c, length, padding, self.rng)
            return torch.from_numpy(mask).to(device)
        mask = torch.as_tensor(precomputed_mask)
        P.check_precomputed_mask(tuple(mask.shape), str(mask.dtype), batch, c, length)
        P.check_mask_counts(mask.detach().cpu().numpy())
        return mask.to(device)

    def _step(self, inputs, keep, precomputed_mask, return_dict):
        pcfg, cfg = self.pretraining_config, self.config
        c, n = pcfg.clone_batch, cfg.num_extra_tokens
        student = self.student
        local = self._local(student, inputs)
        b, t, d = local.shape
        mask = self._mask(precomputed_mask, b, t, keep, local.device)
        alibi = self._alibi(t, local.device)

        # ---- student: clones, masked positions removed
        x = self._positions(student, local)
        keep_c = None if keep is None else keep.repeat_interleave(c, 0)
        maskf = mask.to(x.dtype)[..., None]
        # upstream's (unstable) argsort: with keep_masked_pct, which masked positions the student
        # keeps is that sort's order of equal keys, so it is called exactly as upstream does
        # (P.upstream_mask_order is the same order in numpy, for the frameworks without torch)
        ids_shuffle = mask.to(torch.uint8).argsort(dim=1)
        kept = P.keep_count(t, int(mask[0].sum()), pcfg.keep_masked_pct)
        ids_keep = ids_shuffle[:, :kept]
        # before the mask is applied, as upstream's x_unmasked; read from each sample's row, not
        # from clone_batch materialised copies (only the positional convs need those)
        xs = _gather_clone_rows(x, ids_keep, c)
        if self._has_pos_conv:  # the positional convs see the masked sequence (zeros or noise)
            x = x.repeat_interleave(c, 0)
            if pcfg.encoder_zero_mask:
                x = x * (1 - maskf)
            else:
                x = torch.where(mask[..., None], torch.randn_like(x) * pcfg.mask_noise_std, x)
            xs = xs + _gather_rows(self._pos_conv(student, x), ids_keep)
        keep_s = None
        if keep_c is not None and not bool(keep_c.all()):
            keep_s = torch.gather(keep_c, 1, ids_keep)
            keep_s = None if bool(keep_s.all()) else keep_s
        alibi_s = None if alibi is None else _gather_alibi(alibi[None].expand(b * c, -1, -1, -1), ids_keep)
        h, _ = run_encoder(student, student, xs, keep_s, alibi_s)

        # ---- decoder: encoder output back in place, masked slots zero (or noise)
        if pcfg.decoder_input_dropout > 0:  # upstream drops in place: the CLS loss sees it too
            h = F.dropout(h, pcfg.decoder_input_dropout, training=self.training)
        # (scattered into place: the backward then reads the kept rows back, no full-size pass)
        dx = h[:, n:]
        slots = dx.new_zeros(b * c, t, d)
        if pcfg.mask_noise_std > 0 and t > kept:
            fill = dx.new_empty(b * c, t - kept, d).normal_(0, pcfg.mask_noise_std)
            slots.scatter_(1, _row_index(ids_shuffle[:, kept:], d), fill)
        dx = slots.scatter(1, _row_index(ids_keep, d), dx)
        if pcfg.add_positions_masked or pcfg.add_positions_all:
            positions = self._positions(student, torch.zeros_like(dx))
            dx = dx + (positions * maskf if pcfg.add_positions_masked else 0)
            dx = dx + (positions if pcfg.add_positions_all else 0)
        prediction = self.decoder(dx)

        # ---- teacher: the unmasked input, once per sample
        with torch.no_grad():
            context = student if pcfg.ema_encoder_only else self.teacher
            if pcfg.ema_local_encoder and not pcfg.ema_encoder_only:
                t_local = self._local(self.teacher, inputs)
            else:
                t_local = local.detach()
            tx = self._positions(context, t_local)
            t_pos = self._pos_conv(context, tx)
            if t_pos is not None:
                tx = tx + t_pos
            t_alibi = None if alibi is None else alibi[None].expand(b, -1, -1, -1)
            _, layers = run_encoder(context, self.teacher, tx, keep, t_alibi, pcfg.end_of_block_targets)
            target = make_targets([y[:, n:] for y in layers], pcfg)

        # ---- losses (fairseq's names), normalised by the masked positions of the global batch
        sample_size = mask.sum()
        global_size, normaliser = self._global_sample_size(sample_size)
        losses = {}
        if pcfg.cls_loss > 0:
            cls_target = target.mean(dim=1).repeat_interleave(c, 0)
            losses["cls"] = regression_loss(h[:, n - 1], cls_target, pcfg, "sum") * (pcfg.cls_loss * global_size)
        rows, cols = mask.nonzero(as_tuple=True)  # clone rows i*c..i*c+c-1 share sample i's targets
        regression = regression_loss(prediction[rows, cols], target[rows // c, cols], pcfg, "sum") * pcfg.d2v_loss
        losses[f"{self._fairseq_modality}_regression"] = regression
        loss = sum(losses.values()) / normaliser
        out = Data2Vec2PreTrainingOutput(loss, losses, sample_size, mask, prediction, target)
        return out if return_dict is not False else out.to_tuple()

    def _global_sample_size(self, sample_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked positions of the global batch, the loss's divisor)``. One process: both are
        ``sample_size``. Training under ``torch.distributed`` (DDP): the count all-reduced
        (fairseq's trainer does the same with ``sample_size``) and, as the divisor, that count
        over the world size, since DDP averages the ranks' gradients: the average is then the
        gradient of the combined batch's loss. The CLS loss is weighted by the global count, so
        N processes equal one process on the combined batch (fairseq weights it by each rank's
        own count)."""
        world = world_size() if self.training else 1
        if world == 1:
            return sample_size, sample_size
        total = all_reduce_sum(sample_size)
        return total, total / world

    @property
    def _has_pos_conv(self) -> bool:
        return False

    @property
    def _fairseq_modality(self) -> str:
        return P.FAIRSEQ_MODALITY[self.modality]

    # ---------------------------------------------------------------- teacher EMA
    @torch.no_grad()
    def ema_update(self, step: int | None = None) -> float:
        """teacher <- tau * teacher + (1 - tau) * student for the tensors the teacher holds
        (frozen ones copied), after optimizer update ``step`` (default: one more than last time).
        Returns tau (``Data2Vec2PretrainingConfig.tau``)."""
        step = self.num_updates + 1 if step is None else int(step)
        tau = self.pretraining_config.tau(step)
        if tau < 1:
            student = dict(self.student.named_parameters())
            teacher = dict(self.teacher.named_parameters())
            for name in self.teacher_names:
                s, t = student[name], teacher[name]
                if not s.requires_grad:
                    t.copy_(s.detach())
                else:
                    rate = 1 - tau  # upstream's EMAModule: mul_(1 - rate), add_(alpha=rate)
                    t.mul_(1 - rate).add_(s.detach().to(t.dtype), alpha=rate)
        self.num_updates, self.last_tau = step, tau
        return tau

    # ---------------------------------------------------------------- checkpoints
    def pretraining_arrays(self) -> dict[str, np.ndarray]:
        """Every weight as canonical numpy arrays: ``<prefix>.*`` (student), ``decoder.*`` and
        ``teacher.*`` (only what the EMA teacher holds)."""
        out = {f"{self.base_model_prefix}.{k}": v for k, v in self.student.state_arrays().items()}
        out.update({f"decoder.{k}": v.detach().cpu().numpy().copy() for k, v in self.decoder.state_dict().items()})
        teacher = self.teacher.state_arrays()
        out.update({f"teacher.{k}": teacher[k] for k in self.teacher_names})
        return out

    def load_pretraining_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        P.check_pretraining_array_names(type(self).__name__, self.pretraining_arrays(), arrays)
        prefix = self.base_model_prefix + "."
        student = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        self.student.load_arrays(student)
        teacher = dict(student)
        teacher.update({k[len("teacher."):]: v for k, v in arrays.items() if k.startswith("teacher.")})
        self.teacher.load_arrays(teacher)
        decoder = {}
        params = self.decoder.state_dict()
        for k, v in arrays.items():
            if k.startswith("decoder."):
                name = k[len("decoder."):]
                P.check_decoder_shape(k, np.shape(v), params[name].shape)
                decoder[name] = torch.from_numpy(np.array(v, dtype=np.float32))
        self.decoder.load_state_dict(decoder, strict=True)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Student, decoder and teacher (``model.safetensors``), the backbone's ``config.json``
        and ``d2v_pretraining.json`` (the recipe, the update count); staged, config files last."""
        return P.save_pretraining_folder(save_directory, self.pretraining_arrays(), self.config, self.pretraining_config,
                                         self.architecture, self.num_updates, self.fairseq_source)

    def fairseq_names(self) -> dict[str, str]:
        """``{parameter / array name: fairseq key}`` for every tensor (the teacher's as
        ``_ema.<key>``): upstream's names, e.g. to compare gradients with a fairseq run."""
        return P.fairseq_keys(list(self.student.state_dict()), self.pretraining_config, self.config)

    def save_fairseq(self, path: str | os.PathLike) -> str:
        """The model as a fairseq ``data2vec_multi`` trainer checkpoint (student, decoder, ``_ema``
        teacher, the source's ``cfg.model``): for a model read from a fairseq checkpoint (or
        from a folder saved from one), every tensor under its original key."""
        return P.save_fairseq_pretraining(type(self).__name__, path, self.pretraining_arrays(), self.fairseq_source,
                                          self.num_updates)

    def save_student(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The student encoder alone, as a ``Data2Vec2*Model`` checkpoint (what the 2.0 model
        classes and ``d2v-convert --from fairseq`` produce)."""
        return self.student.save_pretrained(save_directory, **kwargs)

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
        folder written by ``save_pretrained`` (or its ``model.safetensors``), or a Hugging Face
        Hub id holding one (``revision``, ``cache_dir``, ``local_files_only``, ``token``,
        ``force_download`` as in HF): student, decoder and EMA teacher as saved, read through
        ``d2v_common.pretrain.data2vec2.load_pretraining``. ``seed``: the seed of the masks
        drawn when none is given. ``model.load_report`` is the ``LoadReport`` (its ``notes``: a
        fairseq config's options the step does not apply).

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
        model.num_updates = loaded.num_updates
        model.fairseq_source = loaded.fairseq
        model.load_report = loaded.report
        return model


# ------------------------------------------------------------------------------ vision


class Data2Vec2VisionForPreTraining(_Data2Vec2ForPreTraining):
    """data2vec 2.0 image pretraining: inverse-block-masked patches removed, 2-D conv decoder,
    EMA teacher, CLS loss with ``cls_loss``.

    Args:
        config: the ``Data2Vec2VisionConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given.
    """

    architecture = "Data2Vec2VisionForPreTraining"
    modality = "vision"
    base_model_prefix = "data2vec2_vision"
    backbone_class = Data2Vec2VisionModel
    config_class = Data2Vec2VisionConfig

    def _local(self, backbone, pixel_values):
        return backbone.embeddings.patch_embeddings(pixel_values)

    def _positions(self, backbone, x):
        table = backbone.embeddings.position_embeddings
        return x if table is None else x + table.to(x.dtype)

    def _alibi(self, length, device):
        return torch.from_numpy(D.image_alibi_bias(self.config)).to(device) if self.config.use_alibi else None

    @document_inputs("Data2Vec2VisionForPreTraining")
    def forward(self, pixel_values, precomputed_mask=None, return_dict=None):
        pixel_values = torch.as_tensor(pixel_values)
        D.check_pixel_values(self.config, tuple(pixel_values.shape))
        return self._step(pixel_values, None, precomputed_mask, return_dict)


# ------------------------------------------------------------------------------- audio


class Data2Vec2AudioForPreTraining(_Data2Vec2ForPreTraining):
    """data2vec 2.0 speech pretraining: span-masked frames zeroed for the positional convs, then
    removed; 1-D conv decoder; EMA teacher.

    Args:
        config: the ``Data2Vec2AudioConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given.
    """

    architecture = "Data2Vec2AudioForPreTraining"
    modality = "audio"
    base_model_prefix = "data2vec2_audio"
    backbone_class = Data2Vec2AudioModel
    config_class = Data2Vec2AudioConfig

    @property
    def _has_pos_conv(self) -> bool:
        return True

    def _local(self, backbone, input_values):
        # each conv layer by conv_layer_as_matmuls; checkpointing recomputes those same kernels
        frames = backbone.feature_extractor(input_values, run_layer=conv_layer_as_matmuls)
        return backbone.feature_projection(frames.transpose(1, 2))

    def _pos_conv(self, backbone, x):
        return positional_convs(backbone.encoder, x)

    @document_inputs("Data2Vec2AudioForPreTraining")
    def forward(self, input_values, attention_mask=None, precomputed_mask=None, return_dict=None):
        input_values = torch.as_tensor(input_values)
        D.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        keep = None
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=input_values.device)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_values.shape))
            frames = int(D.frame_lengths(self.config, input_values.shape[1]))
            keep = self.student.frame_mask(attention_mask, frames)
        return self._step(input_values, keep, precomputed_mask, return_dict)


# -------------------------------------------------------------------------------- text


class Data2Vec2TextForPreTraining(_Data2Vec2ForPreTraining):
    """data2vec 2.0 text pretraining: masked tokens removed, 1-D conv decoder, EMA teacher.

    Args:
        config: the ``Data2Vec2TextConfig`` of the student (and teacher).
        pretraining_config: a ``Data2Vec2PretrainingConfig`` (or a dict of its fields).
        seed: seed of the masks drawn when none is given.
    """

    architecture = "Data2Vec2TextForPreTraining"
    modality = "text"
    base_model_prefix = "data2vec2_text"
    backbone_class = Data2Vec2TextModel
    config_class = Data2Vec2TextConfig

    def _local(self, backbone, input_ids):
        return backbone.embeddings(input_ids)

    @document_inputs("Data2Vec2TextForPreTraining")
    def forward(self, input_ids, attention_mask=None, precomputed_mask=None, return_dict=None):
        input_ids = torch.as_tensor(input_ids)
        D.check_input_ids(self.config, input_ids.detach().cpu().numpy())
        if attention_mask is None:
            keep = input_ids != self.config.pad_token_id
        else:
            attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_ids.shape))
            keep = attention_mask.bool()
        return self._step(input_ids, keep, precomputed_mask, return_dict)


__all__ = [
    "Data2Vec2AudioForPreTraining",
    "Data2Vec2Decoder",
    "Data2Vec2TextForPreTraining",
    "Data2Vec2VisionForPreTraining",
    "make_targets",
    "regression_loss",
    "run_encoder",
]
