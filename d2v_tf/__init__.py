"""Data2Vec in Keras 3, with HF's class names, arguments and outputs.

The classes keep HF's ``TF`` prefix (checkpoint and code compatibility), but they are Keras 3
classes for any backend: TensorFlow (the default when ``KERAS_BACKEND`` is unset), JAX or
PyTorch. Set ``KERAS_BACKEND`` before the first ``import keras``; backend-specific pieces live
in ``d2v_tf.backend``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from d2v_tf import backend  # noqa: E402  (raises ImportError for an unsupported backend)
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig  # noqa: E402
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig  # noqa: E402
from d2v_common.models.checks import model_class_for  # noqa: E402
from d2v_tf.audio import (  # noqa: E402
    TFData2VecAudioForAudioFrameClassification,
    TFData2VecAudioForCTC,
    TFData2VecAudioForSequenceClassification,
    TFData2VecAudioForXVector,
    TFData2VecAudioModel,
    TFData2VecAudioPreTrainedModel,
)
from d2v_tf.data2vec2 import (  # noqa: E402
    TFData2Vec2AudioForCTC,
    TFData2Vec2AudioForSequenceClassification,
    TFData2Vec2AudioModel,
    TFData2Vec2PreTrainedModel,
    TFData2Vec2TextForSequenceClassification,
    TFData2Vec2TextModel,
    TFData2Vec2VisionForImageClassification,
    TFData2Vec2VisionModel,
)
from d2v_tf.data2vec2_pretraining import (  # noqa: E402
    TFData2Vec2AudioForPreTraining,
    TFData2Vec2TextForPreTraining,
    TFData2Vec2VisionForPreTraining,
)
from d2v_tf.base import MODEL_REGISTRY, TFData2VecPreTrainedModel  # noqa: E402
from d2v_tf.pipelines import pipeline  # noqa: E402
from d2v_tf.pretraining import (  # noqa: E402
    TFData2VecAudioForPreTraining,
    TFData2VecTextForPreTraining,
    TFData2VecVisionForPreTraining,
)
from d2v_tf.text import (  # noqa: E402
    TFData2VecTextForCausalLM,
    TFData2VecTextForMaskedLM,
    TFData2VecTextForMultipleChoice,
    TFData2VecTextForQuestionAnswering,
    TFData2VecTextForSequenceClassification,
    TFData2VecTextForTokenClassification,
    TFData2VecTextModel,
    TFData2VecTextPreTrainedModel,
)
from d2v_tf.vision import (  # noqa: E402
    TFData2VecVisionForImageClassification,
    TFData2VecVisionForSemanticSegmentation,
    TFData2VecVisionModel,
    TFData2VecVisionPreTrainedModel,
)

# The classes register themselves (d2v_common.models.registry): MODEL_REGISTRY holds every class by
# the HF architecture it implements (its ``architecture`` attribute, HF's PyTorch name).
# MODEL_CLASSES: the checkpoint classes, how tools find the Keras class for a ``config.json`` or a
# crosscheck case; PRETRAINING_CLASSES: the data2vec pretraining wrappers.
MODEL_CLASSES = MODEL_REGISTRY.of_kind("model")
PRETRAINING_CLASSES = MODEL_REGISTRY.of_kind("pretraining")


def model_class(architecture: str):
    """The Keras class implementing an HF architecture name.

    Args:
        architecture: an HF PyTorch class name, e.g. ``"Data2VecVisionModel"``.

    Returns:
        The d2v model class.

    Raises:
        ValueError: the name is not a Data2Vec architecture.
    """
    return model_class_for(MODEL_CLASSES, architecture)

backend.register_output_classes()

__all__ = [
    "Data2Vec2AudioConfig",
    "Data2Vec2TextConfig",
    "Data2Vec2VisionConfig",
    "TFData2Vec2AudioForCTC",
    "TFData2Vec2AudioForPreTraining",
    "TFData2Vec2AudioForSequenceClassification",
    "TFData2Vec2AudioModel",
    "TFData2Vec2PreTrainedModel",
    "TFData2Vec2TextForPreTraining",
    "TFData2Vec2TextForSequenceClassification",
    "TFData2Vec2TextModel",
    "TFData2Vec2VisionForImageClassification",
    "TFData2Vec2VisionForPreTraining",
    "TFData2Vec2VisionModel",
    "MODEL_CLASSES",
    "MODEL_REGISTRY",
    "PRETRAINING_CLASSES",
    "model_class",
    "pipeline",
    "Data2VecAudioConfig",
    "Data2VecTextConfig",
    "Data2VecVisionConfig",
    "TFData2VecAudioForAudioFrameClassification",
    "TFData2VecAudioForCTC",
    "TFData2VecAudioForPreTraining",
    "TFData2VecAudioForSequenceClassification",
    "TFData2VecAudioForXVector",
    "TFData2VecAudioModel",
    "TFData2VecAudioPreTrainedModel",
    "TFData2VecPreTrainedModel",
    "TFData2VecTextForCausalLM",
    "TFData2VecTextForMaskedLM",
    "TFData2VecTextForMultipleChoice",
    "TFData2VecTextForPreTraining",
    "TFData2VecTextForQuestionAnswering",
    "TFData2VecTextForSequenceClassification",
    "TFData2VecTextForTokenClassification",
    "TFData2VecTextModel",
    "TFData2VecTextPreTrainedModel",
    "TFData2VecVisionForImageClassification",
    "TFData2VecVisionForPreTraining",
    "TFData2VecVisionForSemanticSegmentation",
    "TFData2VecVisionModel",
    "TFData2VecVisionPreTrainedModel",
]
