"""``pipeline(task, model=...)`` in Keras 3 (any backend): HF's pipelines for the d2v classes.

Everything but the forward is framework-neutral (d2v_common.pipelines: tasks, input reading,
chunked speech recognition, scores and outputs); this file loads the Keras class and runs it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from d2v_common.models.checks import model_class_for
from d2v_common.pipelines import Pipeline, PipelineRunner, build_pipeline
from d2v_tf.base import MODEL_REGISTRY, TFData2VecPreTrainedModel


# ------------------------------------------------------------------------------ runner
class KerasRunner(PipelineRunner):
    """Loads and runs Keras models in inference mode (``training=False``), on the backend's device."""

    framework = "tf"
    package = "d2v_tf"

    def model_class(self, architecture: str) -> type:
        return model_class_for(MODEL_REGISTRY.of_kind("model"), architecture)

    def is_model(self, model: Any) -> bool:
        return isinstance(model, TFData2VecPreTrainedModel)

    def forward(self, model: TFData2VecPreTrainedModel, inputs: dict[str, np.ndarray], field: str) -> np.ndarray:
        output = model(**inputs, training=False)
        return np.asarray(keras.ops.convert_to_numpy(output[field]), dtype=np.float32)

    def tensor(self, array: np.ndarray) -> Any:
        return keras.ops.convert_to_tensor(array)


# ------------------------------------------------------------------------------ pipeline
def pipeline(task: str, model: Any = None, *, tokenizer: Any = None, feature_extractor: Any = None,
             image_processor: Any = None, model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Pipeline:
    """A pipeline for ``task`` on a d2v Keras model, called as HF's.

    Args:
        task: ``"automatic-speech-recognition"``, ``"audio-classification"``,
            ``"image-classification"``, ``"text-classification"`` or ``"feature-extraction"``.
        model: a checkpoint folder or hub id (the task's class is loaded from it, and so are the
            processors not given), or a d2v Keras model (then pass its processors).
        tokenizer, feature_extractor, image_processor: d2v_common.processing objects, or the
            folder / hub id to load them from.
        model_kwargs: more ``from_pretrained`` keywords (config overrides).
        kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``
            for the hub, then the task's call options as defaults (``top_k``, ``chunk_length_s``, ...).

    Returns:
        A ``d2v_common.pipelines.Pipeline``: call it on one input or a list.

    Examples:
        >>> asr = pipeline("automatic-speech-recognition", model="facebook/data2vec-audio-base-960h")  # doctest: +SKIP
        >>> asr("speech.wav", chunk_length_s=10)  # doctest: +SKIP
        {'text': '...'}
    """
    return build_pipeline(task, model, KerasRunner(), tokenizer=tokenizer, feature_extractor=feature_extractor,
                          image_processor=image_processor, model_kwargs=model_kwargs, **kwargs)


__all__ = ["KerasRunner", "pipeline"]
