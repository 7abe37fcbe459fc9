"""data2vec self-supervised pretraining in PyTorch: student, EMA teacher, regression head.

Twin of ``d2v_tf/pretraining.py``, section for section. The recipe (hyper-parameters, tau
schedule, mask generators, the numpy definition of targets and loss) is
``d2v_common.pretrain.data2vec1``.

A training loop::

    model = Data2VecVisionForPreTraining(config)          # config.use_mask_token=True
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for pixel_values in batches:
        out = model(pixel_values)                          # masks drawn unless given
        out.loss.backward(); opt.step(); opt.zero_grad()
        model.ema_update()                                 # teacher <- EMA of the student
    model.save_student("ckpt")                             # loads into every head class

Under ``DistributedDataParallel`` call ``ddp.module.ema_update()``: every rank holds the same
student after the step, so every teacher stays the same. The loss is normalised by the masked
positions of the global batch (an all-reduce of the count), so DDP's gradient averaging gives
the gradient of the loss over the combined batch.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from d2v_common.models.audio import feature_lengths
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.pretrain.data2vec1 import (
    check_masked_tokens_given_together,
    pretraining_patch_grid,
    NORM_EPS,
    SPREAD_EPS,
    Data2VecPreTrainingOutput,
    TargetCollapseWarning,
    bert_mask,
    block_mask,
    check_backbone_config,
    check_mask,
    collapse_message,
    resolve,
    span_mask,
)
from d2v_torch.audio import Data2VecAudioModel
from d2v_torch.base import TeacherStudentPretrainingModule, all_reduce_sum, world_size
from d2v_torch.text import Data2VecTextModel
from d2v_torch.vision import Data2VecVisionModel

logger = logging.getLogger("d2v.pretraining")

# -------------------------------------------------------------------- targets and loss


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=NORM_EPS)


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C): each row and channel normalised over time."""
    return F.instance_norm(x.float().transpose(1, 2), eps=NORM_EPS).transpose(1, 2)


def build_targets(layers, config) -> torch.Tensor:
    """Average of the top-K teacher layers, each normalised (float32)."""
    top = list(layers)[-config.top_k(len(layers)):]
    if config.instance_norm_target_layer:
        top = [_instance_norm(x) for x in top]
    if config.layer_norm_target_layer:
        top = [_layer_norm(x) for x in top]
    y = sum(x.float() for x in top) / len(top)
    if config.layer_norm_targets:
        y = _layer_norm(y)
    if config.instance_norm_targets:
        y = _instance_norm(y)
    return y


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, config) -> torch.Tensor:
    """Per-position loss (B, T): L2 or smooth-L1 summed over features, times the loss scale."""
    x, y = prediction.float(), target.float()
    beta = config.loss_beta
    per = F.mse_loss(x, y, reduction="none") if beta == 0 else F.smooth_l1_loss(x, y, reduction="none", beta=beta)
    return per.sum(-1) * config.scale(x.shape[-1])


def masked_spread(values: torch.Tensor, mask: torch.Tensor, world: int) -> torch.Tensor:
    """Mean over features of the std over masked positions (of every rank), in float64."""
    with torch.no_grad():
        v = values.detach().double().reshape(-1, values.shape[-1])
        m = mask.reshape(-1, 1).double()
        sums = torch.cat([m.sum(0), (v * m).sum(0), (v * v * m).sum(0)])
        if world > 1:
            sums = all_reduce_sum(sums)
        c = values.shape[-1]
        n, s, ss = sums[0], sums[1 : 1 + c], sums[1 + c :]
        var = (ss - s * s / n) / (n - 1)
        return torch.sqrt(var.clamp_min(0) + SPREAD_EPS).mean().float()


# ------------------------------------------------------------------------------ base


class _Data2VecForPreTraining(TeacherStudentPretrainingModule):
    """What the three modalities share: the teacher, the EMA, the loss and the monitoring.

    Subclasses set ``architecture``, ``modality``, ``base_model_prefix``, ``backbone_class``,
    ``config_class`` and write ``forward`` (masks, student and teacher passes), ending in
    ``self._finish``.
    """

    def __init__(self, config, pretraining_config=None, seed: int | None = None):
        super().__init__(config)
        self.config = config
        self.pretraining_config = resolve(pretraining_config, self.modality)
        check_backbone_config(config, self.pretraining_config)
        setattr(self, self.base_model_prefix, self._backbone())
        self.teacher = self._backbone()
        self.teacher.load_arrays(self.student.state_arrays())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        hidden = config.hidden_size
        self.regression_head = nn.Linear(hidden, hidden)
        nn.init.normal_(self.regression_head.weight, std=config.initializer_range)
        nn.init.zeros_(self.regression_head.bias)
        self._start_ema_count_and_mask_rng(seed)

    def _backbone(self):
        return self.backbone_class(self.config)

    # ------------------------------------------------------------------- teacher EMA
    @torch.no_grad()
    def ema_update(self, step: int | None = None) -> float:
        """teacher <- tau * teacher + (1 - tau) * student, after an optimizer step; ``step`` is
        the number of optimizer updates so far (default: one more than last time). Returns tau."""
        step = self.num_updates + 1 if step is None else int(step)
        tau = self.pretraining_config.tau(step)
        student = dict(self.student.named_parameters())
        for name, t in self.teacher.named_parameters():
            t.mul_(tau).add_(student[name].detach().to(t.dtype), alpha=1.0 - tau)
        self.num_updates, self.last_tau = step, tau
        return tau

    def get_extra_state(self):
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state) -> None:
        self.num_updates = int(state["num_updates"])

    # -------------------------------------------------------------------- the loss
    def _finish(self, student_hidden, target, mask, return_dict):
        """Regression head, loss over the masked positions, monitoring."""
        prediction = self.regression_head(student_hidden)
        mask = mask.to(prediction.device).bool()
        per_position = regression_loss(prediction, target, self.pretraining_config)
        maskf = mask.to(per_position.dtype)
        world = world_size() if self.training else 1
        count = maskf.sum()
        if world > 1:  # DDP averages gradients: scale so that the average is the global mean
            count = all_reduce_sum(count) / world
        loss = (per_position * maskf).sum() / count
        target_var = masked_spread(target, mask, world)
        pred_var = masked_spread(prediction, mask, world)
        self._monitor(loss, target_var, pred_var)
        out = Data2VecPreTrainingOutput(loss, target_var, pred_var, mask, prediction, target)
        return out if return_dict is not False else out.to_tuple()

    def _monitor(self, loss, target_var, pred_var) -> None:
        if not self.training:
            return
        tv, pv = float(target_var), float(pred_var)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "data2vec %s update %d: loss %.6g target_var %.4g pred_var %.4g",
                self.modality, self.num_updates, float(loss.detach()), tv, pv,
            )
        if self.num_updates >= self.pretraining_config.var_check_after:
            message = collapse_message(tv, pv, self.pretraining_config)
            if message:
                logger.warning(message)
                warnings.warn(message, TargetCollapseWarning, stacklevel=3)

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
        """Every weight as canonical numpy arrays: ``<prefix>.*`` (student), ``teacher.*``,
        ``regression_head.weight`` (out, in) / ``.bias``."""
        out = {f"{self.base_model_prefix}.{k}": v for k, v in self.student.state_arrays().items()}
        out.update({f"teacher.{k}": v for k, v in self.teacher.state_arrays().items()})
        out["regression_head.weight"] = self.regression_head.weight.detach().cpu().numpy().copy()
        out["regression_head.bias"] = self.regression_head.bias.detach().cpu().numpy().copy()
        return out

    def load_pretraining_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        self.student.load_arrays(part(f"{self.base_model_prefix}."))
        self.teacher.load_arrays(part("teacher."))
        with torch.no_grad():
            for name in ("weight", "bias"):
                value = np.asarray(arrays[f"regression_head.{name}"])
                param = getattr(self.regression_head, name)
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"regression_head.{name}: got shape {value.shape}, expected {tuple(param.shape)}")
                param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))

    def _teacher_layers(self, out) -> list:
        """Per-layer teacher outputs the targets come from."""
        if self.pretraining_config.target_layer == "ffn":
            return list(out.ffn_states)
        return list(out.hidden_states[1:])


def _as_mask(mask, shape: tuple, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    check_mask(name, tuple(mask.shape), shape, str(mask.dtype), mask.detach().cpu().numpy())
    return mask.bool()


# ----------------------------------------------------------------------------- audio


class Data2VecAudioForPreTraining(_Data2VecForPreTraining):
    """Student sees frames masked with the learned ``masked_spec_embed`` (spans); targets are
    instance-normalised FFN outputs of the teacher's top layers; L2 loss scaled by 1/sqrt(D)."""

    architecture = "Data2VecAudioForPreTraining"
    modality = "audio"
    base_model_prefix = "data2vec_audio"
    backbone_class = Data2VecAudioModel
    config_class = Data2VecAudioConfig

    @document_inputs("Data2VecAudioForPreTraining")
    def forward(self, input_values, attention_mask=None, mask_time_indices=None, return_dict=None):
        input_values = torch.as_tensor(input_values)
        batch, samples = input_values.shape[0], input_values.shape[-1]
        frames = int(feature_lengths(self.config, samples, add_adapter=False))
        lengths = None
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)
            lengths = feature_lengths(self.config, attention_mask.long().sum(-1).cpu().numpy(), add_adapter=False)
        if mask_time_indices is None:
            mask_time_indices = torch.from_numpy(span_mask(self.pretraining_config, batch, frames, lengths, self.rng))
        mask = _as_mask(mask_time_indices, (batch, frames), "mask_time_indices").to(input_values.device)
        student = self.student(input_values, attention_mask=attention_mask, mask_time_indices=mask, return_dict=True)
        with torch.no_grad():
            out = self.teacher(
                input_values, attention_mask=attention_mask, return_dict=True,
                output_hidden_states=True, output_ffn_states=True,
            )
            target = build_targets(self._teacher_layers(out), self.pretraining_config)
        if lengths is not None:  # padded frames are never in the loss
            lengths = torch.as_tensor(lengths, device=mask.device)
            mask = mask & (torch.arange(frames, device=mask.device)[None] < lengths[:, None])
        return self._finish(student.last_hidden_state, target, mask, return_dict)


# ------------------------------------------------------------------------------ text


class Data2VecTextForPreTraining(_Data2VecForPreTraining):
    """Student sees BERT-style corrupted tokens; targets are layer-normalised FFN outputs of the
    teacher's top layers on the clean tokens; smooth-L1 (beta 4) on the selected tokens."""

    architecture = "Data2VecTextForPreTraining"
    modality = "text"
    base_model_prefix = "data2vec_text"
    backbone_class = Data2VecTextModel
    config_class = Data2VecTextConfig

    def _backbone(self):
        return Data2VecTextModel(self.config, add_pooling_layer=False)  # the pooler gets no gradient

    @document_inputs("Data2VecTextForPreTraining")
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masked_input_ids=None,
                masked_positions=None, return_dict=None):
        """``masked_input_ids`` (the student's corrupted tokens) and ``masked_positions`` (bool,
        the tokens in the loss) come together, or are drawn (``d2v_common.pretrain.data2vec1.bert_mask``)."""
        input_ids = torch.as_tensor(input_ids)
        check_masked_tokens_given_together(masked_input_ids, masked_positions)
        if masked_input_ids is None:
            am = None if attention_mask is None else torch.as_tensor(attention_mask).cpu().numpy()
            corrupted, selected = bert_mask(self.pretraining_config, self.config, input_ids.cpu().numpy(), am, self.rng)
            masked_input_ids, masked_positions = torch.from_numpy(corrupted), torch.from_numpy(selected)
        masked_input_ids = torch.as_tensor(masked_input_ids).to(input_ids.device)
        if tuple(masked_input_ids.shape) != tuple(input_ids.shape):
            raise ValueError(f"masked_input_ids must have the shape of input_ids {tuple(input_ids.shape)}")
        mask = _as_mask(masked_positions, tuple(input_ids.shape), "masked_positions").to(input_ids.device)
        student = self.student(
            masked_input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        )
        with torch.no_grad():
            out = self.teacher(
                input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True,
                output_hidden_states=True, output_ffn_states=True,
            )
            target = build_targets(self._teacher_layers(out), self.pretraining_config)
        return self._finish(student.last_hidden_state, target, mask, return_dict)


# ---------------------------------------------------------------------------- vision


class Data2VecVisionForPreTraining(_Data2VecForPreTraining):
    """Student sees patches replaced by the mask token (blocks); targets are layer-normalised
    block outputs of the teacher's top layers; smooth-L1 (beta 2) on the masked patches."""

    architecture = "Data2VecVisionForPreTraining"
    modality = "vision"
    base_model_prefix = "data2vec_vision"
    backbone_class = Data2VecVisionModel
    config_class = Data2VecVisionConfig

    @document_inputs("Data2VecVisionForPreTraining")
    def forward(self, pixel_values, bool_masked_pos=None, return_dict=None):
        pixel_values = torch.as_tensor(pixel_values)
        grid = pretraining_patch_grid(self.config, tuple(pixel_values.shape))
        batch = pixel_values.shape[0]
        if bool_masked_pos is None:
            bool_masked_pos = torch.from_numpy(block_mask(self.pretraining_config, batch, grid, self.rng))
        mask = _as_mask(bool_masked_pos, (batch, grid[0] * grid[1]), "bool_masked_pos").to(pixel_values.device)
        student = self.student(pixel_values, bool_masked_pos=mask, return_dict=True)
        with torch.no_grad():
            out = self.teacher(pixel_values, output_hidden_states=True, return_dict=True)
            target = build_targets([h[:, 1:] for h in out.hidden_states[1:]], self.pretraining_config)
        return self._finish(student.last_hidden_state[:, 1:], target, mask, return_dict)


__all__ = [
    "Data2VecAudioForPreTraining",
    "Data2VecTextForPreTraining",
    "Data2VecVisionForPreTraining",
    "build_targets",
    "regression_loss",
]
