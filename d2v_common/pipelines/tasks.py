"""The pipeline tasks, with HF's names, call options and outputs.

Each ``Task`` here turns one input into numpy model inputs with the pipeline's processors,
calls ``pipe.forward`` once per model input (once per chunk for long audio) and formats the
result. Nothing here depends on the framework.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from d2v_common.pipelines.audio import ChunkPlan, load_waveform
from d2v_common.pipelines.base import (
    Pipeline,
    Task,
    check_top_k,
    classification_function,
    register_task,
    top_labels,
)
from d2v_common.processing import AudioFeatureExtractor, CTCTokenizer, ImageProcessor, TextTokenizer
from d2v_common.processing.base import optional_import

# the processors a modality's inputs go through, by pipeline() keyword
TEXT = {"tokenizer": TextTokenizer}
AUDIO = {"feature_extractor": AudioFeatureExtractor}
VISION = {"image_processor": ImageProcessor}
# text-classification and feature-extraction pass these on to the tokenizer
TOKENIZER_OPTIONS = ("truncation", "max_length", "padding")


def _classification_options(options: dict[str, Any], pipe: Pipeline, default_function: str | None) -> dict:
    top_k = options["top_k"]
    if top_k != "":  # "": not given (text-classification's one-label output)
        top_k = check_top_k(top_k)
        top_k = None if top_k is None else min(top_k, pipe.model.config.num_labels)
    function = options["function_to_apply"]
    return {**options, "top_k": top_k,
            "function_to_apply": classification_function(default_function if function is None else function,
                                                         pipe.model.config)}


def _audio_inputs(pipe: Pipeline, item: Any, **extractor_options: Any) -> tuple[np.ndarray, dict]:
    extractor = pipe.feature_extractor
    waveform = load_waveform(item, extractor.sampling_rate)
    return waveform, dict(extractor(waveform, sampling_rate=extractor.sampling_rate, return_tensors="np",
                                    **extractor_options))


def _image_inputs(pipe: Pipeline, item: Any) -> dict:
    if isinstance(item, (str, os.PathLike)):
        if not os.path.isfile(item):
            raise FileNotFoundError(f"no image file {os.fspath(item)!r}")
        image = optional_import("PIL.Image")
        with image.open(item) as opened:
            item = opened.convert("RGB")
    return dict(pipe.image_processor(item, return_tensors="np"))


def _text_inputs(pipe: Pipeline, item: Any, options: dict[str, Any]) -> dict:
    kwargs = {k: options[k] for k in TOKENIZER_OPTIONS if options.get(k) is not None}
    if isinstance(item, dict):
        if set(item) - {"text", "text_pair"} or "text" not in item:
            raise ValueError(f"a text pair is a dict with the keys 'text' and 'text_pair', got keys {sorted(item)}")
        return dict(pipe.tokenizer(item["text"], text_pair=item.get("text_pair"), return_tensors="np", **kwargs))
    if not isinstance(item, str):
        raise TypeError(f"the {pipe.task.name!r} pipeline takes a string, a {{'text', 'text_pair'}} dict or a list "
                        f"of them; got {type(item).__name__}")
    return dict(pipe.tokenizer(item, return_tensors="np", **kwargs))


# ------------------------------------------------------------------------------ speech recognition
@register_task
class SpeechRecognition(Task):
    """Waveforms (arrays, files, ``{"raw", "sampling_rate"}`` dicts) to ``{"text": ...}`` with a CTC
    model; ``chunk_length_s`` runs long audio in overlapping chunks, one at a time;
    ``return_timestamps="char"`` or ``"word"`` adds ``chunks`` with start and end seconds."""

    name = "automatic-speech-recognition"
    architectures = {"audio": "Data2VecAudioForCTC", "audio2": "Data2Vec2AudioForCTC"}
    processors = {"audio": {**AUDIO, "tokenizer": CTCTokenizer}}
    options = {"chunk_length_s": None, "stride_length_s": None, "return_timestamps": None}

    def check_options(self, options, pipe):
        chunk, stride, timestamps = options["chunk_length_s"], options["stride_length_s"], options["return_timestamps"]
        plan = None
        if chunk is not None and chunk != 0:  # 0 turns chunking off, as in HF
            plan = ChunkPlan.from_seconds(chunk, stride, pipe.feature_extractor.sampling_rate,
                                          pipe.model.config.inputs_to_logits_ratio)
        elif stride is not None:
            raise ValueError("stride_length_s is the overlap of chunks: it needs chunk_length_s as well")
        if timestamps not in (None, False, "char", "word"):
            raise ValueError(f"return_timestamps must be 'char', 'word' or None for a CTC model, got {timestamps!r}")
        return {**options, "plan": plan}

    def run(self, pipe, item, options):
        extractor, plan = pipe.feature_extractor, options["plan"]
        waveform = load_waveform(item, extractor.sampling_rate)
        if plan is None:
            plan = ChunkPlan(len(waveform), 0, 0, pipe.model.config.inputs_to_logits_ratio)
        ids = []
        for chunk in plan.chunks(len(waveform)):  # one chunk's features and logits alive at a time
            features = extractor(waveform[chunk.start: chunk.end], sampling_rate=extractor.sampling_rate,
                                 return_attention_mask=True, return_tensors="np")
            logits = pipe.forward(dict(features), "logits")[0]
            ids.append(logits.argmax(-1)[plan.kept_frames(chunk)])
        ids = np.concatenate(ids)
        timestamps = options["return_timestamps"]
        if not timestamps:
            return {"text": pipe.tokenizer.decode(ids)}
        decoded = pipe.tokenizer.decode(ids, output_char_offsets=timestamps == "char",
                                        output_word_offsets=timestamps == "word")
        seconds = plan.samples_per_frame / extractor.sampling_rate
        return {"text": decoded.text, "chunks": [
            {"text": o[timestamps], "timestamp": (o["start_offset"] * seconds, o["end_offset"] * seconds)}
            for o in decoded[f"{timestamps}_offsets"]]}


# ------------------------------------------------------------------------------ classification
@register_task
class AudioClassification(Task):
    """Waveforms to ``[{"label", "score"}]``, best first: every label unless ``top_k``; softmax
    unless ``function_to_apply`` ("sigmoid", "none")."""

    name = "audio-classification"
    architectures = {"audio": "Data2VecAudioForSequenceClassification",
                     "audio2": "Data2Vec2AudioForSequenceClassification"}
    processors = {"audio": AUDIO}
    options = {"top_k": None, "function_to_apply": None}

    def check_options(self, options, pipe):
        return _classification_options(options, pipe, "softmax")

    def run(self, pipe, item, options):
        _, inputs = _audio_inputs(pipe, item)
        return top_labels(pipe.forward(inputs, "logits")[0], pipe.model.config.id2label,
                          options["function_to_apply"], options["top_k"])


@register_task
class ImageClassification(Task):
    """Images (PIL, arrays, file paths) to ``[{"label", "score"}]``, best first, ``top_k`` of them
    (5); the function is the config's (sigmoid for one label or multi-label, else softmax)."""

    name = "image-classification"
    architectures = {"vision": "Data2VecVisionForImageClassification",
                     "vision2": "Data2Vec2VisionForImageClassification"}
    processors = {"vision": VISION}
    options = {"top_k": 5, "function_to_apply": None}

    def check_options(self, options, pipe):
        return _classification_options(options, pipe, None)

    def run(self, pipe, item, options):
        return top_labels(pipe.forward(_image_inputs(pipe, item), "logits")[0], pipe.model.config.id2label,
                          options["function_to_apply"], options["top_k"])


@register_task
class TextClassification(Task):
    """Texts (or ``{"text", "text_pair"}`` dicts) to labels. As HF: without ``top_k`` each input
    gives one ``{"label", "score"}`` (a single string: a list of one); with ``top_k`` (None: all)
    each gives a list, best first."""

    name = "text-classification"
    architectures = {"text": "Data2VecTextForSequenceClassification",
                     "text2": "Data2Vec2TextForSequenceClassification"}
    processors = {"text": TEXT}
    options = {"top_k": "", "function_to_apply": None, **dict.fromkeys(TOKENIZER_OPTIONS)}

    def check_options(self, options, pipe):
        return _classification_options(options, pipe, None)

    def run(self, pipe, item, options):
        labels = top_labels(pipe.forward(_text_inputs(pipe, item, options), "logits")[0],
                            pipe.model.config.id2label, options["function_to_apply"],
                            1 if options["top_k"] == "" else options["top_k"])
        return labels[0] if options["top_k"] == "" else labels

    def collect(self, results, inputs, batched, options):
        if not batched and isinstance(inputs, str) and options["top_k"] == "":
            return results  # HF: one text without top_k gives a list of one label
        return results if batched else results[0]


# ------------------------------------------------------------------------------ features
@register_task
class FeatureExtraction(Task):
    """The base model's ``last_hidden_state`` (batch of one) of a text, waveform or image: nested
    lists, or the framework's tensor with ``return_tensors=True``. Text is HF's task; the audio
    and vision models take waveforms and images the same way."""

    name = "feature-extraction"
    architectures = {"text": "Data2VecTextModel", "text2": "Data2Vec2TextModel",
                     "audio": "Data2VecAudioModel", "audio2": "Data2Vec2AudioModel",
                     "vision": "Data2VecVisionModel", "vision2": "Data2Vec2VisionModel"}
    processors = {"text": TEXT, "audio": AUDIO, "vision": VISION}
    options = {"return_tensors": False, "truncation": None, "max_length": None, "padding": None}

    def check_options(self, options, pipe):
        if not isinstance(options["return_tensors"], bool):
            raise TypeError(f"return_tensors must be True (the framework's tensor) or False (nested lists), "
                            f"got {options['return_tensors']!r}")
        if pipe.modality != "text" and any(options[k] is not None for k in TOKENIZER_OPTIONS):
            raise ValueError(f"{', '.join(TOKENIZER_OPTIONS)} are tokenizer options: a {pipe.modality} model has no "
                             "tokenizer")
        return options

    def run(self, pipe, item, options):
        if pipe.modality == "text":
            inputs = _text_inputs(pipe, item, options)
        elif pipe.modality == "audio":
            inputs = _audio_inputs(pipe, item)[1]
        else:
            inputs = _image_inputs(pipe, item)
        hidden = pipe.forward(inputs, "last_hidden_state")
        return pipe.runner.tensor(hidden) if options["return_tensors"] else hidden.tolist()


__all__ = ["AudioClassification", "FeatureExtraction", "ImageClassification", "SpeechRecognition",
           "TextClassification"]
