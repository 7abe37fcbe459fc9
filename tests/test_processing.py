"""Preprocessing (issue 9): d2v_common.processing against transformers' own processors.

Every file here is made by the test: a tiny byte-level BPE trained with ``tokenizers``, HF's
``save_pretrained`` output of RobertaTokenizerFast / Wav2Vec2FeatureExtractor /
BeitImageProcessor, random waveforms and images.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from PIL import Image

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.processing import AudioFeatureExtractor, BatchFeature, ImageProcessor, TextTokenizer
from d2v_common.spec import weight_spec
from tests.oracle import hf_config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _rows(value):
    """Per-example numpy arrays from a batched array, a list of arrays, or tensors."""
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return [np.asarray(v) for v in value]


# =====================================================================================  text
CORPUS = [
    "Hello world, this is a tiny corpus.",
    "The quick brown fox jumps over the lazy dog!",
    "Data2Vec learns from text, audio and images.",
    "Ünïcödé text — with émojis 🙂 and tabs\tand newlines\n.",
    "Isn't it nice? We're sure it's fine, they've said so.",
] * 20
TEXTS = ["Hello world", " Hello <mask> world!", "", "Ünïcödé 🙂 text\twith tabs", "The capital is <mask>. Fine ,  ok ."]
PAIRS = ["second one", "x", "yy yy", "", "a b c d e f g"]
TEXT_KWARGS = [
    {},
    dict(padding=True),
    dict(padding="max_length", max_length=24, truncation=True),
    dict(truncation=True, max_length=12),
    dict(max_length=12),  # HF: a max_length alone truncates
    dict(padding="longest", return_token_type_ids=True, pad_to_multiple_of=8),
    dict(padding=True, padding_side="left", return_special_tokens_mask=True, return_offsets_mapping=True,
         return_length=True),
    dict(add_special_tokens=False, return_attention_mask=False),
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Directories of one tiny vocabulary in the layouts real checkpoints use."""
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("tok")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    files = root / "files"  # vocab.json + merges.txt only, <mask> last as in RoBERTa
    files.mkdir()
    bpe.save_model(str(files))
    vocab = json.loads((files / "vocab.json").read_text())
    vocab["<mask>"] = len(vocab)
    (files / "vocab.json").write_text(json.dumps(vocab))
    dirs = {"files": files}
    dirs["hf"] = root / "hf"  # what HF's save_pretrained writes
    transformers.RobertaTokenizerFast(str(files / "vocab.json"), str(files / "merges.txt")).save_pretrained(dirs["hf"])
    dirs["json"] = root / "json"  # tokenizer.json alone
    dirs["json"].mkdir()
    shutil.copy(dirs["hf"] / "tokenizer.json", dirs["json"] / "tokenizer.json")
    dirs["prefix"] = root / "prefix"  # add_prefix_space and a model_max_length in tokenizer_config.json
    transformers.RobertaTokenizerFast(
        str(files / "vocab.json"), str(files / "merges.txt"), add_prefix_space=True, model_max_length=16
    ).save_pretrained(dirs["prefix"])
    return dirs


@pytest.mark.parametrize("layout", ["hf", "files", "json", "prefix"])
def test_tokenizer_ids_equal_hf(tokenizer_dirs, layout):
    hf = transformers.RobertaTokenizerFast.from_pretrained(tokenizer_dirs[layout])
    ours = TextTokenizer.from_pretrained(tokenizer_dirs[layout])
    assert len(ours) == len(hf) and ours.vocab_size == hf.vocab_size
    assert ours.mask_token_id == hf.mask_token_id == len(hf) - 1 and ours.pad_token_id == hf.pad_token_id == 1
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in TEXT_KWARGS:
            for args in [(TEXTS,), (TEXTS, PAIRS), (TEXTS[1],), (TEXTS[1], PAIRS[0]), (list(zip(TEXTS, PAIRS)),)]:
                expected, got = hf(*args, **kwargs), ours(*args, **kwargs)
                assert dict(got) == dict(expected), (layout, kwargs, args)
                checked += 1
            for strategy, length in (("only_first", 20), ("only_second", 32)):
                kw = dict(truncation=strategy, max_length=length, padding=True)
                assert dict(ours(TEXTS, PAIRS, **kw)) == dict(hf(TEXTS, PAIRS, **kw))
    assert checked == len(TEXT_KWARGS) * 5
    # The mask token takes the space before it, as in RoBERTa.
    assert ours(" a <mask>")["input_ids"][-2] == ours.mask_token_id


@pytest.mark.parametrize("return_tensors", ["np", "pt", "tf"])
def test_tokenizer_tensors_equal_hf(tokenizer_dirs, return_tensors):
    hf = transformers.RobertaTokenizerFast.from_pretrained(tokenizer_dirs["hf"])
    ours = TextTokenizer.from_pretrained(tokenizer_dirs["hf"])
    expected = hf(TEXTS, PAIRS, padding=True, return_tensors="np")
    got = ours(TEXTS, PAIRS, padding=True, return_tensors=return_tensors)
    kind = {"np": np.ndarray, "pt": torch.Tensor, "tf": tf.Tensor}[return_tensors]
    assert set(got) == {"input_ids", "attention_mask"}
    for key in got:
        assert isinstance(got[key], kind)
        assert np.array_equal(np.asarray(got[key]), expected[key])
    single = ours(TEXTS[0], return_tensors=return_tensors)
    assert tuple(single.input_ids.shape) == (1, len(hf(TEXTS[0])["input_ids"]))


def test_tokenizer_decode_equals_hf(tokenizer_dirs):
    hf = transformers.RobertaTokenizerFast.from_pretrained(tokenizer_dirs["hf"])
    ours = TextTokenizer.from_pretrained(tokenizer_dirs["hf"])
    ids = hf(TEXTS + CORPUS[:5], padding=True)["input_ids"]
    for skip in (False, True):
        for cleanup in (False, True):
            kw = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=cleanup)
            assert ours.batch_decode(ids, **kw) == hf.batch_decode(ids, **kw)
            assert ours.batch_decode(np.asarray(ids), **kw) == hf.batch_decode(ids, **kw)
    assert ours.decode(torch.tensor(ids[1])) == hf.decode(ids[1])
    assert ours.decode(ids[1], skip_special_tokens=True) == " Hello world!"  # <mask> took its space along
    assert ours.convert_ids_to_tokens(ids[0]) == hf.convert_ids_to_tokens(ids[0])
    assert ours.tokenize(CORPUS[3]) == hf.tokenize(CORPUS[3])
    assert ours.convert_tokens_to_ids(["<s>", "never-seen"]) == [0, 3]


def test_tokenizer_save_round_trip_and_hf_reads_it(tokenizer_dirs, tmp_path):
    ours = TextTokenizer.from_pretrained(tokenizer_dirs["prefix"])
    ours.save_pretrained(tmp_path)
    again = TextTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reference = transformers.RobertaTokenizerFast.from_pretrained(tokenizer_dirs["prefix"])
    kw = dict(padding=True, truncation=True)
    assert again.model_max_length == 16 and hf.model_max_length == 16
    assert dict(again(TEXTS, PAIRS, **kw)) == dict(hf(TEXTS, PAIRS, **kw)) == dict(reference(TEXTS, PAIRS, **kw))


def test_tokenizer_json_without_post_processor_still_adds_specials(tokenizer_dirs, tmp_path):
    """tokenizers' own save has no post-processor; HF would then drop <s> </s> (d2v does not)."""
    data = json.loads((tokenizer_dirs["hf"] / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    ours = TextTokenizer.from_pretrained(tmp_path)
    hf = transformers.RobertaTokenizerFast.from_pretrained(tokenizer_dirs["hf"])
    assert dict(ours(TEXTS, PAIRS)) == dict(hf(TEXTS, PAIRS))


def test_tokenizer_bad_input_raises_clear_errors(tokenizer_dirs, tmp_path):
    ours = TextTokenizer.from_pretrained(tokenizer_dirs["hf"])  # no model_max_length
    with pytest.raises(TypeError, match=r"text\[1\] must be a str"):
        ours(["fine", 3])
    with pytest.raises(TypeError, match="text must be a str"):
        ours(None)
    with pytest.raises(ValueError, match="empty batch"):
        ours([])
    with pytest.raises(ValueError, match="as long as text"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding must be"):
        ours("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation must be"):
        ours("a", truncation="middle", max_length=4)
    with pytest.raises(ValueError, match="no model_max_length"):
        ours("a", padding="max_length")
    with pytest.raises(ValueError, match="different lengths"):
        ours(TEXTS, return_tensors="np")
    with pytest.raises(ValueError, match="cannot encode"):
        ours(TEXTS, PAIRS, truncation="only_second", max_length=5)
    with pytest.raises(ValueError, match="return_tensors"):
        ours("a", return_tensors="jax")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([0, -100, 2])
    with pytest.raises(ValueError, match="batch_decode"):
        ours.decode([[0, 2]])
    with pytest.raises(FileNotFoundError, match="neither"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ValueError, match="BertTokenizer"):
        TextTokenizer.from_pretrained(tmp_path)
    limited = TextTokenizer.from_pretrained(tokenizer_dirs["prefix"])
    with pytest.warns(UserWarning, match="model_max_length=16"):
        limited(CORPUS[3] * 3)


# =====================================================================================  audio
AUDIO_CONFIGS = [
    dict(),  # HF's defaults: normalise, no attention mask
    dict(return_attention_mask=True),  # what data2vec-audio checkpoints ship
    dict(return_attention_mask=True, do_normalize=False),
    dict(return_attention_mask=True, padding_value=0.5, sampling_rate=8000),
]
AUDIO_KWARGS = [
    dict(),
    dict(padding=True),
    dict(padding="max_length", max_length=2000),
    dict(padding="max_length", max_length=800, truncation=True),
    dict(padding=True, pad_to_multiple_of=128),
    dict(padding="longest", return_attention_mask=False),
    dict(padding=True, return_attention_mask=True),
    dict(truncation=True, max_length=500, pad_to_multiple_of=64),
]


def _waves(rng):
    return [(0.3 * rng.standard_normal(n) + 0.1).astype(np.float32) for n in (1000, 1733, 400)]


def _compare_audio(expected, got, tol):
    assert list(got) == list(expected)
    worst = 0.0
    for key in expected:
        a, b = _rows(expected[key]), _rows(got[key])
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.shape == y.shape, key
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))))
    assert worst <= tol
    return worst


@pytest.mark.parametrize("config", AUDIO_CONFIGS, ids=range(len(AUDIO_CONFIGS)))
def test_audio_features_equal_hf(config, tmp_path, rng):
    transformers.Wav2Vec2FeatureExtractor(**config).save_pretrained(tmp_path)
    hf = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    ours = AudioFeatureExtractor.from_pretrained(tmp_path)
    rate = config.get("sampling_rate", 16000)
    waves = _waves(rng)
    inputs = [waves, [w.astype(np.float64) for w in waves], waves[0], [w.tolist() for w in waves], waves[1].tolist(),
              np.stack([waves[0], waves[0][::-1]])]
    worst = 0.0
    for kwargs in AUDIO_KWARGS:
        for raw in inputs:
            expected = hf(copy.deepcopy(raw), sampling_rate=rate, **kwargs)
            got = ours(raw, sampling_rate=rate, **kwargs)
            worst = max(worst, _compare_audio(expected, got, 1e-6))
            assert all(v.dtype == np.float32 for v in _rows(got["input_values"]))
            if "attention_mask" in got:
                assert all(v.dtype == np.int32 for v in _rows(got["attention_mask"]))
    assert worst == 0.0  # same float32 operations in the same order: bit-exact
    # int16 PCM: HF normalises in float64 there, d2v in float32
    pcm = [(w * 8000).astype(np.int16) for w in waves]
    _compare_audio(hf(pcm, sampling_rate=rate, padding=True), ours(pcm, sampling_rate=rate, padding=True), 1e-6)


@pytest.mark.parametrize("return_tensors", ["np", "pt", "tf"])
def test_audio_tensors(return_tensors, rng):
    hf = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    ours = AudioFeatureExtractor(return_attention_mask=True)
    waves = _waves(rng)
    got = ours(waves, sampling_rate=16000, padding=True, return_tensors=return_tensors)
    kind = {"np": np.ndarray, "pt": torch.Tensor, "tf": tf.Tensor}[return_tensors]
    assert isinstance(got.input_values, kind) and tuple(got.input_values.shape) == (3, 1733)
    expected = hf(waves, sampling_rate=16000, padding=True, return_tensors="np")
    for key in ("input_values", "attention_mask"):
        assert np.array_equal(np.asarray(got[key]), expected[key])


def test_audio_left_padding_normalises_the_real_samples(rng):
    waves = _waves(rng)
    right = AudioFeatureExtractor(return_attention_mask=True)(waves, sampling_rate=16000, padding=True)
    left = AudioFeatureExtractor(return_attention_mask=True, padding_side="left")(
        waves, sampling_rate=16000, padding=True
    )
    for i, w in enumerate(waves):
        n = len(w)
        assert np.array_equal(left.attention_mask[i], right.attention_mask[i][::-1])
        assert np.array_equal(left.input_values[i][-n:], right.input_values[i][:n])
        assert np.all(left.input_values[i][:-n] == 0.0)
        assert abs(float(left.input_values[i][-n:].mean())) < 1e-5


def test_audio_save_round_trip_and_hf_reads_it(tmp_path, rng):
    ours = AudioFeatureExtractor(return_attention_mask=True, sampling_rate=22050, padding_value=0.25)
    ours.save_pretrained(tmp_path)
    hf = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    again = AudioFeatureExtractor.from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    waves = _waves(rng)
    _compare_audio(
        hf(waves, sampling_rate=22050, padding=True), again(waves, sampling_rate=22050, padding=True), 0.0
    )


def test_audio_bad_input_raises_clear_errors(rng):
    ours = AudioFeatureExtractor()
    wave = _waves(rng)[0]
    with pytest.raises(ValueError, match="8000 Hz.*16000 Hz"):
        ours(wave, sampling_rate=8000)
    with pytest.warns(UserWarning, match="sampling_rate"):
        ours(wave)
    with pytest.raises(ValueError, match="empty"):
        ours([], sampling_rate=16000)
    with pytest.raises(ValueError, match="utterance 1 is empty"):
        ours([wave, np.zeros(0)], sampling_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 100\)"):
        ours(np.zeros((2, 3, 100)), sampling_rate=16000)
    with pytest.raises(ValueError, match="0-D|1-D|shape"):
        ours(np.float32(1.0), sampling_rate=16000)
    with pytest.raises(ValueError, match="utterance 0 must be 1-D"):
        ours([np.zeros((2, 100))], sampling_rate=16000)
    with pytest.raises(ValueError, match="NaN"):
        ours(np.array([0.0, np.nan, 1.0]), sampling_rate=16000)
    with pytest.raises(TypeError, match="real numbers"):
        ours(np.array(["a", "b"]), sampling_rate=16000)
    with pytest.raises(ValueError, match="truncation=True needs max_length"):
        ours(wave, sampling_rate=16000, truncation=True)
    with pytest.raises(ValueError, match="needs max_length"):
        ours(wave, sampling_rate=16000, padding="max_length")
    with pytest.raises(ValueError, match="different shapes"):
        ours(_waves(rng), sampling_rate=16000, return_tensors="np")
    with pytest.raises(ValueError, match="padding must be"):
        ours(wave, sampling_rate=16000, padding="both")
    with pytest.raises(ValueError, match="WhisperFeatureExtractor"):
        AudioFeatureExtractor.from_dict({"feature_extractor_type": "WhisperFeatureExtractor"})
    with pytest.raises(ValueError, match="mono"):
        AudioFeatureExtractor(feature_size=2)


# =====================================================================================  images
IMAGE_CONFIGS = [
    dict(),  # BEiT defaults: resize 256 bicubic, crop 224, mean = std = 0.5
    dict(size={"height": 32, "width": 40}, crop_size={"height": 24, "width": 24}, do_reduce_labels=True),
    dict(do_resize=False, crop_size={"height": 48, "width": 30}),  # crop larger than some images: zero padding
    dict(resample=2, do_center_crop=False, size=32, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    dict(do_normalize=False, resample=0, size={"height": 16, "width": 16}, do_reduce_labels=True),
    dict(resample=1, do_rescale=False, size={"height": 19, "width": 23}, crop_size=18),
]


def _image_inputs(rng):
    u8 = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(37, 53, 3), (64, 48, 3), (20, 20, 3)]]
    return {
        "uint8-hwc": u8,
        "uint8-chw": [np.ascontiguousarray(np.moveaxis(i, -1, 0)) for i in u8],
        "pil": [Image.fromarray(i) for i in u8],
        "float-0-1": [i.astype(np.float32) / 255 for i in u8],
        "float-0-255": [i.astype(np.float64) for i in u8],
        "batched-4d": np.stack([rng.integers(0, 256, size=(30, 41, 3), dtype=np.uint8) for _ in range(2)]),
        "single-pil": Image.fromarray(u8[0]),
    }, u8


@pytest.mark.parametrize("config", IMAGE_CONFIGS, ids=range(len(IMAGE_CONFIGS)))
def test_image_pixels_and_labels_equal_hf(config, tmp_path, rng):
    transformers.BeitImageProcessor(**config).save_pretrained(tmp_path)
    hf = transformers.BeitImageProcessor.from_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    inputs, u8 = _image_inputs(rng)
    segs = [rng.integers(0, 6, size=i.shape[:2]).astype(np.uint8) for i in u8]
    segs[1] = segs[1].astype(np.int64)  # integer maps of another dtype go through the same path
    worst, compared = 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn about rescaling [0, 1] floats again
        for name, images in inputs.items():
            kwargs = {}
            if name in ("uint8-hwc", "pil", "float-0-1"):
                kwargs["segmentation_maps"] = segs
            expected = hf(copy.deepcopy(images), **copy.deepcopy(kwargs))  # HF edits label maps in place
            got = ours(images, **kwargs)
            assert list(got) == list(expected)
            for key in expected:
                for x, y in zip(_rows(expected[key]), _rows(got[key]), strict=True):
                    assert x.shape == y.shape, (name, key)
                    if key == "labels":
                        assert y.dtype == np.int64 and np.array_equal(x, y), name
                    else:
                        assert y.dtype == np.float32
                        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))))
                    compared += 1
    assert compared == 2 * 3 * 3 + 3 + 3 + 2 + 1
    assert worst <= 1e-5
    assert worst == 0.0  # Pillow does the resize on both sides and the float ops are the same


def test_image_tensor_inputs_formats_and_return_tensors(rng):
    ours = ImageProcessor(size=24, crop_size=16)
    batch = rng.integers(0, 256, size=(2, 3, 30, 20), dtype=np.uint8)
    reference = ours(batch)
    assert reference.pixel_values.shape == (2, 3, 16, 16) and reference.pixel_values.dtype == np.float32
    assert np.array_equal(ours(torch.from_numpy(batch)).pixel_values, reference.pixel_values)
    assert np.array_equal(ours(tf.constant(batch)).pixel_values, reference.pixel_values)
    hwc = np.ascontiguousarray(np.moveaxis(batch, 1, -1))
    assert np.array_equal(ours(list(hwc)).pixel_values, reference.pixel_values)
    last = ours(hwc, data_format="channels_last").pixel_values
    assert np.array_equal(np.moveaxis(last, -1, 1), reference.pixel_values)
    # a 3-row image is ambiguous (3 could be channels): HF's rule reads it as channels first
    assert ours(hwc[:, :3], input_data_format="channels_last").pixel_values.shape == (2, 3, 16, 16)
    for kind, cls in (("pt", torch.Tensor), ("tf", tf.Tensor)):
        out = ours(batch, segmentation_maps=batch[:, 0], return_tensors=kind)
        assert isinstance(out.pixel_values, cls) and isinstance(out["labels"], cls)
        assert np.array_equal(np.asarray(out.pixel_values), reference.pixel_values)
    assert isinstance(reference, BatchFeature) and list(reference) == ["pixel_values"]


def test_image_segmentation_maps_are_not_modified(rng):
    seg = rng.integers(0, 4, size=(20, 20)).astype(np.uint8)
    before = seg.copy()
    processor = ImageProcessor(size=8, crop_size=8, do_reduce_labels=True)
    image = np.zeros((20, 20, 3), np.uint8)
    out = processor(image, seg, label_resample="nearest")
    assert np.array_equal(seg, before)
    assert set(np.unique(out["labels"]).tolist()) <= {0, 1, 2, 255}
    # HF's default resizes labels with the image filter (bicubic), which invents class ids
    assert not set(np.unique(processor(image, seg)["labels"]).tolist()) <= {0, 1, 2, 255}
    assert np.array_equal(processor(image, seg).pixel_values, out.pixel_values)


def test_image_save_round_trip_and_hf_reads_it(tmp_path, rng):
    ours = ImageProcessor(size=(30, 20), crop_size=16, resample="bilinear", do_reduce_labels=True, image_mean=0.4)
    ours.save_pretrained(tmp_path)
    again = ImageProcessor.from_pretrained(tmp_path)
    hf = transformers.BeitImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    image = rng.integers(0, 256, size=(33, 27, 3), dtype=np.uint8)
    seg = rng.integers(0, 5, size=(33, 27)).astype(np.uint8)
    expected = hf(image, segmentation_maps=seg.copy())
    got = again(image, segmentation_maps=seg)
    assert np.array_equal(got.pixel_values, np.stack(expected["pixel_values"]))
    assert np.array_equal(got["labels"], np.stack(expected["labels"]))
    # older configs: int sizes and reduce_labels
    old = ImageProcessor.from_dict({"feature_extractor_type": "BeitFeatureExtractor", "size": 20, "reduce_labels": True})
    assert old.size == {"height": 20, "width": 20} and old.do_reduce_labels


def test_image_bad_input_raises_clear_errors(rng):
    ours = ImageProcessor(size=8, crop_size=8)
    image = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no channel axis"):
        ours(np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        ours(np.zeros((10, 12, 4), np.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        ours(image.astype(np.float32) / 100)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ours(image.astype(np.int32) * 2)
    with pytest.raises(ValueError, match="NaN"):
        ours(np.full((10, 12, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="no images"):
        ours([])
    with pytest.raises(ValueError, match="5 dimensions|dimensions"):
        ours(np.zeros((1, 2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        ours([image, image], segmentation_maps=[np.zeros((10, 12), np.uint8)])
    with pytest.raises(ValueError, match="integer class ids"):
        ours(image, segmentation_maps=np.full((10, 12), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ours(image, segmentation_maps=np.full((10, 12), 300))
    with pytest.raises(ValueError, match="image_mean has 3 values but the image has 1"):
        ours(image[..., :1])
    with pytest.raises(ValueError, match="'height' and 'width'"):
        ImageProcessor(size={"shortest_edge": 224})
    with pytest.raises(ValueError, match="resample"):
        ImageProcessor(resample="cubic-ish")
    with pytest.raises(ValueError, match="ViTImageProcessor"):
        ImageProcessor.from_dict({"image_processor_type": "ViTImageProcessor"})
    with pytest.raises(ValueError, match="data_format"):
        ours(image, data_format="nchw")


def test_segmentation_post_processing_equals_hf(rng):
    hf = transformers.BeitImageProcessor()
    ours = ImageProcessor()
    sizes = [(37, 53), (8, 10), (5, 90)]
    for _ in range(5):
        logits = torch.from_numpy(rng.standard_normal((3, 5, 8, 10)).astype(np.float32))
        outputs = transformers.modeling_outputs.SemanticSegmenterOutput(logits=logits)
        for target in (sizes, None):
            expected = [m.numpy() for m in hf.post_process_semantic_segmentation(outputs, target_sizes=target)]
            for given in (outputs, logits, tf.constant(logits.numpy()), {"logits": logits.numpy()}):
                got = ours.post_process_semantic_segmentation(given, target_sizes=target)
                for x, y in zip(expected, got, strict=True):
                    assert y.dtype == np.int64 and np.array_equal(x, y)
    with pytest.raises(ValueError, match="3 target sizes for a batch of 2"):
        ours.post_process_semantic_segmentation(np.zeros((2, 3, 4, 4)), target_sizes=sizes)
    with pytest.raises(ValueError, match=r"\(batch, num_labels, height, width\)"):
        ours.post_process_semantic_segmentation(np.zeros((3, 4, 4)))


# =====================================================================================  end to end
def _readme_block(marker: str) -> str:
    """The README's Preprocessing code block that contains ``marker``."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Preprocessing", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def _hf_model(config, arch, seed=0):
    """transformers' PyTorch model with the spec's seeded random weights, in eval mode."""
    model = getattr(transformers, arch)(hf_config(config)).eval()
    arrays = weight_spec(config, arch).random_arrays(seed)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    return model


def _same_argmax_except_near_ties(ids, logits, margin=1e-4):
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return np.all((ids == logits.argmax(-1)) | (top2[..., 1] - top2[..., 0] < margin))


@pytest.fixture(scope="module")
def vision_checkpoint(tmp_path_factory):
    """A tiny HF Data2VecVisionForImageClassification saved by transformers, with its image processor."""
    path = tmp_path_factory.mktemp("vision")
    config = Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3, use_relative_position_bias=True,
    )
    hf_model = _hf_model(config, "Data2VecVisionForImageClassification")
    hf_model.save_pretrained(path)
    transformers.BeitImageProcessor(size=40, crop_size=32).save_pretrained(path)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)).save(path / "cat.png")
    return path, hf_model


def test_readme_vision_snippet_runs_and_matches_hf(vision_checkpoint, monkeypatch):
    path, hf_model = vision_checkpoint
    monkeypatch.chdir(path)  # the snippet opens "cat.png"
    code = _readme_block("ImageProcessor").replace("path/to/data2vec-vision", str(path))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    hf_inputs = transformers.BeitImageProcessor.from_pretrained(path)(
        Image.open(path / "cat.png").convert("RGB"), return_tensors="pt"
    )
    with torch.no_grad():
        expected = hf_model(**hf_inputs).logits.numpy()
    got_pt = scope["logits_pt"].detach().numpy()
    got_tf = scope["logits_tf"].numpy()
    assert got_pt.shape == expected.shape == (1, 3)
    assert np.max(np.abs(got_pt - expected)) <= 1e-5
    assert np.max(np.abs(got_tf - got_pt)) <= 1e-5


def test_readme_text_snippet_runs_and_matches_hf(tokenizer_dirs, tmp_path):
    from d2v_common.configs import Data2VecTextConfig

    config = Data2VecTextConfig(
        vocab_size=len(TextTokenizer.from_pretrained(tokenizer_dirs["hf"])), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64, type_vocab_size=1, num_labels=3,
    )
    hf_model = _hf_model(config, "Data2VecTextForSequenceClassification")
    hf_model.save_pretrained(tmp_path)
    for name in os.listdir(tokenizer_dirs["hf"]):
        shutil.copy(tokenizer_dirs["hf"] / name, tmp_path / name)
    scope: dict = {}
    code = _readme_block("TextTokenizer").replace("path/to/data2vec-text", str(tmp_path))
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf_model(**hf_tokenizer(scope["texts"], padding=True, return_tensors="pt")).logits.numpy()
    assert expected.shape == (2, 3)
    assert np.max(np.abs(scope["logits_pt"].detach().numpy() - expected)) <= 1e-5
    assert np.max(np.abs(scope["logits_tf"].numpy() - expected)) <= 1e-5


def test_readme_audio_snippet_runs_and_matches_hf(tmp_path):
    from d2v_common.configs import Data2VecAudioConfig

    config = Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, conv_dim=[16] * 7,
        vocab_size=12, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )
    hf_model = _hf_model(config, "Data2VecAudioForCTC")
    hf_model.save_pretrained(tmp_path, safe_serialization=False)  # as the real repo: pytorch_model.bin
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>",
                                                                                 "|", *"ETAONIS"])}))
    transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json")).save_pretrained(tmp_path)
    # the snippet loads by hub id: serve it from a hub cache, offline
    from tests.hubcache import folder_files, make_hub_cache, serve_offline

    with pytest.MonkeyPatch.context() as monkeypatch:
        make_hub_cache(tmp_path / "hub", "facebook/data2vec-audio-base-960h", folder_files(tmp_path))
        serve_offline(monkeypatch, tmp_path / "hub")
        np.random.seed(0)  # the snippet draws its waveforms with np.random
        scope: dict = {}
        code = _readme_block("AudioFeatureExtractor")
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    hf_tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    assert scope["tokenizer"].batch_decode(scope["ids_tf"]) == hf_tokenizer.batch_decode(scope["ids_tf"])
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf_model(**extractor(scope["waves"], sampling_rate=16000, padding=True, return_tensors="pt")).logits
    expected = expected.numpy()
    assert scope["ids_pt"].shape == scope["ids_tf"].shape == expected.shape[:2] == (2, 49)
    assert _same_argmax_except_near_ties(scope["ids_pt"].numpy(), expected)
    assert _same_argmax_except_near_ties(scope["ids_tf"], expected)


def test_segmentation_end_to_end_label_map_at_original_size(rng):
    import d2v_tf
    import d2v_torch

    config = Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, out_indices=[1, 2, 3, 4], auxiliary_channels=16, pool_scales=[1, 2], num_labels=4,
        use_auxiliary_head=False,
    )
    arch = "Data2VecVisionForSemanticSegmentation"
    arrays = weight_spec(config, arch).random_arrays(1)
    hf_model = _hf_model(config, arch, seed=1)
    pt = getattr(d2v_torch, arch)(config).eval()
    pt.load_arrays(arrays)
    keras_model = getattr(d2v_tf, "TF" + arch)(config)
    keras_model.load_arrays(arrays)

    settings = dict(size={"height": 32, "width": 32}, do_center_crop=False)
    ours, hf = ImageProcessor(**settings), transformers.BeitImageProcessor(**settings)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(50, 70, 3), (41, 33, 3)]]
    sizes = [i.shape[:2] for i in images]
    with torch.no_grad():
        expected = hf.post_process_semantic_segmentation(hf_model(**hf(images, return_tensors="pt")), sizes)
        pt_outputs = pt(**ours(images, return_tensors="pt"))
    from_pt = ours.post_process_semantic_segmentation(pt_outputs, sizes)
    from_tf = ours.post_process_semantic_segmentation(keras_model(**ours(images, return_tensors="tf")), sizes)
    for i, (e, a, b, size) in enumerate(zip(expected, from_pt, from_tf, sizes, strict=True)):
        assert a.shape == b.shape == tuple(size)
        assert np.array_equal(a, e.numpy())
        # TF logits differ from torch's by ~1e-6: a label may differ only where two classes nearly tie
        resized = torch.nn.functional.interpolate(pt_outputs.logits[i : i + 1], size=size, mode="bilinear")[0]
        assert _same_argmax_except_near_ties(b, np.moveaxis(resized.numpy(), 0, -1))


def test_common_imports_without_optional_packages():
    """d2v_common (processing included) imports with numpy alone: the optional packages load lazily."""
    blocked = ["torch", "tensorflow", "keras", "tokenizers", "PIL", "transformers"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import d2v_common, d2v_common.processing as p\n"
        "import numpy as np\n"
        "fe = p.AudioFeatureExtractor(return_attention_mask=True)\n"
        "out = fe([np.ones(5), np.arange(3.0)], sampling_rate=16000, padding=True)\n"
        "assert out.input_values.shape == (2, 5)\n"
        "try:\n"
        "    p.ImageProcessor()(np.zeros((4, 4, 3), np.uint8))\n"
        "except ImportError as err:\n"
        "    assert 'pillow' in str(err).lower() or 'PIL' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('resizing without Pillow must raise ImportError')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
