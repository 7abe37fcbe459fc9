"""Data2Vec in Keras 3 (TensorFlow backend), with HF's class names, arguments and outputs."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"d2v_tf needs Keras 3 with the TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}")

from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig  # noqa: E402
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig  # noqa: E402
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
from d2v_tf.base import TFData2VecPreTrainedModel  # noqa: E402
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

__all__ = [
    "Data2Vec2AudioConfig",
    "Data2Vec2TextConfig",
    "Data2Vec2VisionConfig",
    "TFData2Vec2AudioForCTC",
    "TFData2Vec2AudioForSequenceClassification",
    "TFData2Vec2AudioModel",
    "TFData2Vec2PreTrainedModel",
    "TFData2Vec2TextForSequenceClassification",
    "TFData2Vec2TextModel",
    "TFData2Vec2VisionForImageClassification",
    "TFData2Vec2VisionModel",
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
