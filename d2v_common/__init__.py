"""Framework-neutral core of d2v: configs, weight specs, layouts and checkpoint IO (numpy only)."""

from d2v_common.configs import (
    Data2VecAudioConfig,
    Data2VecConfigBase,
    Data2VecTextConfig,
    Data2VecVisionConfig,
    load_config,
)
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.loader.matching import LoadReport
from d2v_common.spec import weight_spec

__version__ = "0.1.0"

__all__ = [
    "Data2Vec2AudioConfig",
    "Data2Vec2TextConfig",
    "Data2Vec2VisionConfig",
    "Data2VecAudioConfig",
    "Data2VecConfigBase",
    "Data2VecTextConfig",
    "Data2VecVisionConfig",
    "LoadReport",
    "load_config",
    "weight_spec",
]
