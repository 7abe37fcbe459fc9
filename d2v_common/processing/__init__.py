"""Preprocessing without transformers: text, waveforms and images to model inputs (numpy out),
and CTC ids back to text (``CTCTokenizer``).

``TextTokenizer`` needs the ``tokenizers`` package and ``ImageProcessor`` needs Pillow for
resizing (``pip install 'd2v[processing]'``); both are imported only when used.
"""

from d2v_common.processing.audio import AudioFeatureExtractor
from d2v_common.processing.base import BatchFeature
from d2v_common.processing.ctc import CTCTokenizer, CTCTokenizerOutput
from d2v_common.processing.image import ImageProcessor
from d2v_common.processing.text import TextTokenizer

__all__ = [
    "AudioFeatureExtractor",
    "BatchFeature",
    "CTCTokenizer",
    "CTCTokenizerOutput",
    "ImageProcessor",
    "TextTokenizer",
]
