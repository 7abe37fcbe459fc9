"""d2v_torch.pipeline / d2v_tf.pipeline against transformers' pipelines on the same folders.

Tiny random checkpoints (d2v writes them, HF reads them): the same transcripts (chunked and
unchunked), labels and scores, and features; the bad-input errors; audio files and resampling.
"""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch
import transformers

import d2v_tf
import d2v_torch
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.data2vec2 import Data2Vec2AudioConfig
from d2v_common.pipelines import ChunkPlan, audio as pipeline_audio
from d2v_common.processing import AudioFeatureExtractor, CTCTokenizer, ImageProcessor

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
AUDIO = dict(TINY, conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "S"]
LABELS = {0: "cat", 1: "dog", 2: "bird"}
ASR = "automatic-speech-recognition"


def _save(architecture, config, folder, seed=0):
    """A d2v PyTorch model with random (non-trivial) weights, saved in HF's layout."""
    model = getattr(d2v_torch, architecture)(config)
    model.load_arrays(model.spec.random_arrays(seed))
    model.save_pretrained(folder)
    return folder


def _speech(seconds, seed=0):
    """A waveform with structure (tones and noise), so random CTC models emit varied ids."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.3 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def ctc_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctc") / "model"
    _save("Data2VecAudioForCTC", Data2VecAudioConfig(**AUDIO, vocab_size=len(VOCAB)), folder)
    AudioFeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    CTCTokenizer({t: i for i, t in enumerate(VOCAB)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_asr(ctc_folder):
    return transformers.pipeline(ASR, model=str(ctc_folder), framework="pt")


# ------------------------------------------------------------------------------ speech recognition
def test_asr_equals_hf_chunked_and_unchunked_in_both_frameworks(ctc_folder, hf_asr):
    """The same text as HF's pipeline on the same folder, whole and in overlapping chunks (a list
    in, a list out); a waveform that fits one chunk gives the unchunked transcript."""
    waves = [_speech(1.5, seed=0), _speech(1.1, seed=1)]
    pt, tf = d2v_torch.pipeline(ASR, model=str(ctc_folder)), d2v_tf.pipeline(ASR, model=ctc_folder)
    for options in ({}, {"chunk_length_s": 0.5, "stride_length_s": 0.1}, {"chunk_length_s": 0.6},
                    {"chunk_length_s": 0.5, "stride_length_s": (0.12, 0.04)}):
        expected = hf_asr([w.copy() for w in waves], **options)
        assert len({e["text"] for e in expected}) == 2 and all(len(e["text"]) > 5 for e in expected)
        assert pt(waves, **options) == tf(waves, **options) == expected, options
    whole = pt(waves[1])
    assert whole == pt(waves[1], chunk_length_s=1.2) == tf(waves[1], chunk_length_s=1.2)
    assert whole != pt(waves[1], chunk_length_s=0.5)  # chunking does change this tiny random model's text
    assert isinstance(whole, dict) and list(whole) == ["text"]


def test_asr_timestamps_equal_hf(ctc_folder, hf_asr):
    wave_ = _speech(1.2)
    pt = d2v_torch.pipeline(ASR, model=ctc_folder)
    for kind in ("char", "word"):
        expected = hf_asr(wave_.copy(), return_timestamps=kind, chunk_length_s=0.5)
        got = pt(wave_, return_timestamps=kind, chunk_length_s=0.5)
        assert got["text"] == expected["text"] and len(got["chunks"]) == len(expected["chunks"]) > 0
        for a, b in zip(got["chunks"], expected["chunks"]):
            assert a["text"] == b["text"] and np.allclose(a["timestamp"], b["timestamp"])


def test_asr_data2vec2_ctc_chunks_in_both_frameworks(tmp_path):
    """Data2Vec2AudioForCTC (no HF twin): the pipeline equals extractor + model + argmax + decode;
    chunked, torch equals Keras and the chunk arithmetic is the same as for 1.0."""
    config = Data2Vec2AudioConfig(**TINY, conv_dim=[16] * 7, vocab_size=len(VOCAB), conv_pos_width=16,
                                  conv_pos_groups=4, conv_pos_depth=1)
    folder = _save("Data2Vec2AudioForCTC", config, tmp_path / "model")
    AudioFeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    tokenizer = CTCTokenizer({t: i for i, t in enumerate(VOCAB)})
    tokenizer.save_pretrained(folder)
    model = d2v_torch.Data2Vec2AudioForCTC.from_pretrained(folder)
    pt = d2v_torch.pipeline(ASR, model=model, feature_extractor=folder, tokenizer=tokenizer)
    tf = d2v_tf.pipeline(ASR, model=folder)
    wave_ = _speech(1.2)
    features = AudioFeatureExtractor.from_pretrained(folder)(wave_, sampling_rate=16000, return_tensors="pt",
                                                             return_attention_mask=True)
    with torch.no_grad():
        manual = tokenizer.decode(model(**features).logits.argmax(-1)[0])
    assert pt(wave_) == tf(wave_) == {"text": manual} and len(manual) > 5
    assert pt(wave_, chunk_length_s=0.5) == tf(wave_, chunk_length_s=0.5)


def test_chunk_plan_covers_the_audio_once():
    """Kept frames of consecutive chunks tile the audio's frames: no gap, no overlap (HF's rounding)."""
    for seconds, chunk_s, stride_s in ((10.0, 2.0, 0.4), (7.3, 1.5, (0.2, 0.5)), (1.0, 4.0, None)):
        plan = ChunkPlan.from_seconds(chunk_s, stride_s, 16000, 320)
        n = int(seconds * 16000)
        kept = []
        for chunk in plan.chunks(n):
            frames = plan.kept_frames(chunk)
            kept.append((chunk.start // 320 + frames.start, chunk.start // 320 + frames.stop))
        assert kept[0][0] == 0 and kept[-1][1] == n // 320
        assert all(a[1] == b[0] for a, b in zip(kept, kept[1:])), kept


# ------------------------------------------------------------------------------ audio files
def _write_wav(path, samples, rate, width=2, channels=1):
    scale = {1: 127, 2: 32767, 4: 2**31 - 1}[width]
    ints = np.round(np.clip(samples, -1, 1) * scale).astype({1: np.int16, 2: "<i2", 4: "<i4"}[width])
    if width == 1:
        ints = (ints + 128).astype(np.uint8)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.repeat(ints, channels).tobytes())


def test_asr_reads_files_bytes_and_dicts_and_resamples(ctc_folder, tmp_path, monkeypatch):
    pt = d2v_torch.pipeline(ASR, model=ctc_folder, chunk_length_s=0.5)
    samples = 0.5 * _speech(0.9) / np.abs(_speech(0.9)).max()
    _write_wav(tmp_path / "a.wav", samples, 16000, channels=2)
    quantised = np.round(samples * 32767) / 32768  # what a 16-bit file holds
    expected = pt(quantised.astype(np.float32))
    assert pt(str(tmp_path / "a.wav")) == pt(tmp_path / "a.wav") == pt((tmp_path / "a.wav").read_bytes()) == expected
    assert pt([{"raw": quantised, "sampling_rate": 16000}]) == [expected]
    monkeypatch.setattr(pipeline_audio, "installed", lambda package: False)  # no soundfile, scipy
    for width in (1, 2, 4):  # the standard library's reader: 8, 16 and 32-bit PCM
        _write_wav(tmp_path / "b.wav", samples, 16000, width=width)
        got, rate = pipeline_audio.read_audio(tmp_path / "b.wav")
        assert rate == 16000 and np.max(np.abs(got - samples)) < 2 / {1: 127, 2: 32767, 4: 2**31}[width]
    assert pt(tmp_path / "a.wav") == expected
    _write_wav(tmp_path / "c.wav", samples[::2], 8000)
    with pytest.raises(ValueError, match="8000 Hz but the model expects 16000 Hz and no resampler.*pip install scipy"):
        pt(tmp_path / "c.wav")
    monkeypatch.undo()
    resampled = pt(tmp_path / "c.wav")  # scipy's polyphase resampler, 8 kHz -> 16 kHz
    assert resampled == pt({"array": pipeline_audio.resample(samples[::2], 8000, 16000), "sampling_rate": 8000 * 2})


# ------------------------------------------------------------------------------ classification and features
@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("text") / "model"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["A first sentence.", "And a second, longer one.", "Data2Vec reads text."] * 4,
                            vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir()
    bpe.save_model(str(folder))
    transformers.RobertaTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    config = Data2VecTextConfig(**TINY, vocab_size=bpe.get_vocab_size(), max_position_embeddings=64, id2label=LABELS)
    return _save("Data2VecTextForSequenceClassification", config, folder)


def _same_labels(got, expected):
    """Equal nesting (lists of lists of label dicts), labels, and scores within 1e-5."""
    assert type(got) is type(expected)
    if isinstance(got, dict):
        assert got["label"] == expected["label"] and abs(got["score"] - expected["score"]) < 1e-5
    else:
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            _same_labels(g, e)


def test_text_classification_equals_hf(text_folder):
    hf = transformers.pipeline("text-classification", model=str(text_folder), framework="pt")
    texts = ["A first sentence.", "And a longer one, data2vec."]
    for framework in (d2v_torch, d2v_tf):
        pipe = framework.pipeline("text-classification", model=text_folder)
        for inputs in (texts[0], texts, {"text": texts[0], "text_pair": texts[1]}):
            for options in ({}, {"top_k": None, "function_to_apply": "sigmoid"}):
                _same_labels(pipe(inputs, **options), hf(inputs, **options))
        _same_labels(pipe(texts[1], top_k=2), hf(texts[1], top_k=2))


def test_feature_extraction_equals_hf(text_folder):
    hf = transformers.pipeline("feature-extraction", model=str(text_folder), framework="pt")
    expected = hf(["A first sentence.", "Data2Vec"])
    for framework, tensor_type in ((d2v_torch, torch.Tensor), (d2v_tf, object)):
        pipe = framework.pipeline("feature-extraction", model=text_folder)
        got = pipe(["A first sentence.", "Data2Vec"])
        assert [np.shape(g) for g in got] == [np.shape(e) for e in expected] == [(1, 7, 32), (1, 5, 32)]
        assert all(np.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))
        tensor = pipe("Data2Vec", return_tensors=True)
        assert isinstance(tensor, tensor_type) and tuple(tensor.shape) == (1, 5, 32)


def test_audio_and_image_classification_equal_hf(tmp_path):
    audio = _save("Data2VecAudioForSequenceClassification", Data2VecAudioConfig(**AUDIO, id2label=LABELS),
                  tmp_path / "audio")
    AudioFeatureExtractor().save_pretrained(audio)
    vision = _save("Data2VecVisionForImageClassification",
                   Data2VecVisionConfig(**TINY, image_size=32, patch_size=8, id2label=LABELS), tmp_path / "vision")
    ImageProcessor(size=40, crop_size=32).save_pretrained(vision)
    images = [np.random.default_rng(i).integers(0, 256, (45, 60, 3), dtype=np.uint8) for i in range(2)]
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "cat.png")
    pil = [Image.fromarray(i) for i in images]
    waves = [_speech(1.0), _speech(0.6, seed=3)]
    cases = [("audio-classification", audio, waves, {}), ("audio-classification", audio, waves[0], {"top_k": 2}),
             ("image-classification", vision, pil, {}), ("image-classification", vision, pil[0], {"top_k": 1}),
             ("image-classification", vision, str(tmp_path / "cat.png"), {"function_to_apply": "none"})]
    for task, folder, inputs, options in cases:
        hf = transformers.pipeline(task, model=str(folder), framework="pt")
        expected = hf([w.copy() for w in inputs] if task.startswith("audio") and isinstance(inputs, list)
                      else inputs, **options)
        for framework in (d2v_torch, d2v_tf):
            _same_labels(framework.pipeline(task, model=folder)(inputs, **options), expected)


# ------------------------------------------------------------------------------ bad input
def test_bad_arguments_raise_errors_naming_the_fix(ctc_folder, text_folder, tmp_path):
    pt = d2v_torch.pipeline(ASR, model=ctc_folder)
    errors = [
        (lambda: d2v_torch.pipeline("translation", model=ctc_folder), ValueError, "unknown pipeline task 'translation'"),
        (lambda: d2v_tf.pipeline(ASR), ValueError, "needs model="),
        (lambda: pt(_speech(1), chunk_length_s=1.0, stride_length_s=0.5), ValueError, "longer than the strides"),
        (lambda: d2v_tf.pipeline(ASR, model=ctc_folder, chunk_length_s=2, stride_length_s=(1, 1.5)), ValueError,
         "lower stride_length_s"),
        (lambda: pt(_speech(1), chunk_length_s=-1), ValueError, "chunk_length_s must be a non-negative"),
        (lambda: pt(_speech(1), chunk_length_s=2, stride_length_s=-0.1), ValueError, "stride_length_s must be"),
        (lambda: pt(_speech(1), stride_length_s=0.1), ValueError, "needs chunk_length_s"),
        (lambda: pt(_speech(1), chunk_length_s=0.001), ValueError, "shorter than one model frame"),
        (lambda: pt(_speech(1), return_timestamps=True), ValueError, "'char', 'word'"),
        (lambda: pt(_speech(1), top_k=2), TypeError, "takes no 'top_k'; its options are chunk_length_s"),
        (lambda: pt(np.zeros((2, 16000))), ValueError, "mono waveform.*pass several waveforms as a list"),
        (lambda: pt({"raw": _speech(1)}), ValueError, "'sampling_rate'"),
        (lambda: pt(str(tmp_path / "missing.wav")), FileNotFoundError, "no audio file"),
        (lambda: d2v_torch.pipeline(ASR, model=d2v_torch.Data2VecAudioForCTC.from_pretrained(ctc_folder)),
         ValueError, "needs a feature_extractor: pass feature_extractor=d2v_common.processing.AudioFeatureExtractor"),
        (lambda: d2v_tf.pipeline(ASR, model=d2v_torch.Data2VecAudioForCTC.from_pretrained(ctc_folder)), TypeError,
         "d2v_tf model"),
        (lambda: d2v_torch.pipeline("text-classification", model=ctc_folder), ValueError,
         "holds a model of the 'audio' family; the 'text-classification' pipeline serves the 'text', 'text2'"),
        (lambda: d2v_torch.pipeline("audio-classification", model=d2v_torch.Data2VecAudioForCTC.from_pretrained(
            ctc_folder)), TypeError, "runs Data2VecAudioForSequenceClassification, not Data2VecAudioForCTC"),
        (lambda: d2v_torch.pipeline("text-classification", model=text_folder, top_k=0), ValueError, "positive int"),
        (lambda: d2v_torch.pipeline("text-classification", model=text_folder, function_to_apply="max"), ValueError,
         "'softmax', 'sigmoid', 'none'"),
        (lambda: d2v_torch.pipeline(ASR, model=text_folder, tokenizer=ctc_folder), ValueError,
         "holds a model of the 'text' family"),
    ]
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (no_tokenizer / name).write_bytes((ctc_folder / name).read_bytes())
    errors.append((lambda: d2v_torch.pipeline(ASR, model=no_tokenizer), ValueError,
                   "needs a tokenizer.*no vocab.json.*pass tokenizer=d2v_common.processing.CTCTokenizer"))
    errors.append((lambda: d2v_torch.pipeline(ASR, model=ctc_folder, tokenizer=AudioFeatureExtractor()), TypeError,
                   "tokenizer must be a d2v_common.processing.CTCTokenizer"))
    for call, error, message in errors:
        with pytest.raises(error, match=message):
            call()
