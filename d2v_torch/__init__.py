"""Data2Vec in PyTorch, with HF's class names, arguments and outputs."""

from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_torch.audio import (
    Data2VecAudioForAudioFrameClassification,
    Data2VecAudioForCTC,
    Data2VecAudioForSequenceClassification,
    Data2VecAudioForXVector,
    Data2VecAudioModel,
    Data2VecAudioPreTrainedModel,
)
from d2v_torch.base import Data2VecPreTrainedModel
from d2v_torch.data2vec2 import (
    Data2Vec2AudioForCTC,
    Data2Vec2AudioForSequenceClassification,
    Data2Vec2AudioModel,
    Data2Vec2PreTrainedModel,
    Data2Vec2TextForSequenceClassification,
    Data2Vec2TextModel,
    Data2Vec2VisionForImageClassification,
    Data2Vec2VisionModel,
)
from d2v_torch.pretraining import (
    Data2VecAudioForPreTraining,
    Data2VecTextForPreTraining,
    Data2VecVisionForPreTraining,
)
from d2v_torch.text import (
    Data2VecTextForCausalLM,
    Data2VecTextForMaskedLM,
    Data2VecTextForMultipleChoice,
    Data2VecTextForQuestionAnswering,
    Data2VecTextForSequenceClassification,
    Data2VecTextForTokenClassification,
    Data2VecTextModel,
    Data2VecTextPreTrainedModel,
)
from d2v_torch.vision import (
    Data2VecVisionForImageClassification,
    Data2VecVisionForSemanticSegmentation,
    Data2VecVisionModel,
    Data2VecVisionPreTrainedModel,
)

__all__ = [
    "Data2Vec2AudioConfig",
    "Data2Vec2AudioForCTC",
    "Data2Vec2AudioForSequenceClassification",
    "Data2Vec2AudioModel",
    "Data2Vec2PreTrainedModel",
    "Data2Vec2TextConfig",
    "Data2Vec2TextForSequenceClassification",
    "Data2Vec2TextModel",
    "Data2Vec2VisionConfig",
    "Data2Vec2VisionForImageClassification",
    "Data2Vec2VisionModel",
    "Data2VecAudioConfig",
    "Data2VecAudioForAudioFrameClassification",
    "Data2VecAudioForCTC",
    "Data2VecAudioForPreTraining",
    "Data2VecAudioForSequenceClassification",
    "Data2VecAudioForXVector",
    "Data2VecAudioModel",
    "Data2VecAudioPreTrainedModel",
    "Data2VecPreTrainedModel",
    "Data2VecTextConfig",
    "Data2VecTextForCausalLM",
    "Data2VecTextForMaskedLM",
    "Data2VecTextForMultipleChoice",
    "Data2VecTextForPreTraining",
    "Data2VecTextForQuestionAnswering",
    "Data2VecTextForSequenceClassification",
    "Data2VecTextForTokenClassification",
    "Data2VecTextModel",
    "Data2VecTextPreTrainedModel",
    "Data2VecVisionConfig",
    "Data2VecVisionForImageClassification",
    "Data2VecVisionForPreTraining",
    "Data2VecVisionForSemanticSegmentation",
    "Data2VecVisionModel",
    "Data2VecVisionPreTrainedModel",
]
