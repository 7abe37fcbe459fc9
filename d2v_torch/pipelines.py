"""``pipeline(task, model=...)`` in PyTorch: HF's pipelines for the d2v classes.

Everything but the forward is framework-neutral (d2v_common.pipelines: tasks, input reading,
chunked speech recognition, scores and outputs); this file loads the PyTorch class and runs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from d2v_common.models.checks import model_class_for
from d2v_common.pipelines import Pipeline, PipelineRunner, build_pipeline
from d2v_torch.base import MODEL_REGISTRY, Data2VecPreTrainedModel


# ------------------------------------------------------------------------------ runner
class TorchRunner(PipelineRunner):
    """Loads and runs PyTorch models: evaluation mode, ``device``, no gradients; inputs are cast
    to the model's floating dtype (a bfloat16 model takes bfloat16 waveforms and pixels)."""

    framework = "pt"
    package = "d2v_torch"

    def __init__(self, device: Any = None):
        self.device = None if device is None else torch.device(device)

    def model_class(self, architecture: str) -> type:
        return model_class_for(MODEL_REGISTRY.of_kind("model"), architecture)

    def is_model(self, model: Any) -> bool:
        return isinstance(model, Data2VecPreTrainedModel)

    def prepare(self, model: Data2VecPreTrainedModel) -> Data2VecPreTrainedModel:
        model = model.eval()
        return model if self.device is None else model.to(self.device)

    def forward(self, model: Data2VecPreTrainedModel, inputs: dict[str, np.ndarray], field: str) -> np.ndarray:
        weight = next(model.parameters())

        def tensor(array: np.ndarray) -> torch.Tensor:
            value = torch.from_numpy(np.ascontiguousarray(array)).to(weight.device)
            return value.to(weight.dtype) if value.is_floating_point() else value

        with torch.inference_mode():
            output = model(**{name: tensor(array) for name, array in inputs.items()})
        return output[field].float().cpu().numpy()

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array)


# ------------------------------------------------------------------------------ pipeline
def pipeline(task: str, model: Any = None, *, tokenizer: Any = None, feature_extractor: Any = None,
             image_processor: Any = None, device: Any = None, model_kwargs: dict[str, Any] | None = None,
             **kwargs: Any) -> Pipeline:
    """A pipeline for ``task`` on a d2v PyTorch model, called as HF's.

    Args:
        task: ``"automatic-speech-recognition"``, ``"audio-classification"``,
            ``"image-classification"``, ``"text-classification"`` or ``"feature-extraction"``.
        model: a checkpoint folder or hub id (the task's class is loaded from it, and so are the
            processors not given), or a d2v PyTorch model (then pass its processors).
        tokenizer, feature_extractor, image_processor: d2v_common.processing objects, or the
            folder / hub id to load them from.
        device: where the model runs (``"cuda"``, ``0``, ``torch.device``); inputs follow it.
        model_kwargs: more ``from_pretrained`` keywords (``dtype``, config overrides).
        kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``
            for the hub, then the task's call options as defaults (``top_k``, ``chunk_length_s``, ...).

    Returns:
        A ``d2v_common.pipelines.Pipeline``: call it on one input or a list.

    Examples:
        >>> asr = pipeline("automatic-speech-recognition", model="facebook/data2vec-audio-base-960h")  # doctest: +SKIP
        >>> asr("speech.wav", chunk_length_s=10)  # doctest: +SKIP
        {'text': '...'}
    """
    if isinstance(device, int):
        device = f"cuda:{device}" if device >= 0 else "cpu"  # HF's integer devices
    return build_pipeline(task, model, TorchRunner(device), tokenizer=tokenizer, feature_extractor=feature_extractor,
                          image_processor=image_processor, model_kwargs=model_kwargs, **kwargs)


__all__ = ["TorchRunner", "pipeline"]
