"""The fine-tuning examples run (quick mode) and beat the majority-class baseline."""

import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # whole fine-tuning runs

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_segmentation_example_beats_chance():
    result = _load("finetune_keras_segmentation").main(["--quick"])
    assert result["pixel_accuracy"] > result["majority_baseline"] + 0.05
    # docs/training.md quotes this run's figures (seed 0), one pair per CPU measured (float
    # rounding differs by CPU): what it prints must be one of them, exactly
    doc = (EXAMPLES.parent / "docs" / "training.md").read_text()
    sentence = re.search(r"With `--quick` it reaches (.*?)`tests/test_examples.py`", doc, re.S)
    assert sentence, "docs/training.md no longer quotes the --quick figures"
    quoted = re.findall(r"pixel accuracy ([\d.]+)\s+and mean IoU ([\d.]+)", sentence.group(1))
    assert quoted, "docs/training.md no longer quotes the --quick figures"
    assert (f"{result['pixel_accuracy']:.3f}", f"{result['mean_iou']:.3f}") in quoted, quoted


@pytest.mark.parametrize("seed", [0])
def test_torch_text_example_beats_chance(seed):
    result = _load("finetune_torch_text").main(["--quick", "--seed", str(seed)])
    assert result["accuracy"] > result["majority_baseline"] + 0.1


def test_continue_pretraining_data2vec2_example(tmp_path):
    """Two steps per modality from tiny checkpoints (a fairseq .pt, a save_pretrained folder):
    the saved student loads in the 2.0 model class and differs from the start; an empty folder
    and a folder of another modality are refused with errors that say so."""
    import wave

    import numpy as np
    from PIL import Image

    from d2v_torch import Data2Vec2AudioForPreTraining, Data2Vec2AudioModel, Data2Vec2VisionModel
    from tests.fixture_paths import DATA2VEC2_PRETRAINING_DIR

    example = _load("continue_pretraining_data2vec2")
    rng = np.random.default_rng(0)
    images, waves, texts = (tmp_path / name for name in ("images", "waves", "texts"))
    for folder in (images, waves, texts):
        folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
        with wave.open(str(waves / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes(rng.normal(0, 3000, 2400 + 800 * i).astype(np.int16).tobytes())
    (texts / "lines.txt").write_text("100 107 114 121\n\n128 100 5 107\n")
    ckpt = {m: os.path.join(DATA2VEC2_PRETRAINING_DIR, f"pretrain-{m}", "checkpoint.pt") for m in ("image", "text")}
    audio = tmp_path / "audio-pretraining"
    Data2Vec2AudioForPreTraining.from_pretrained(
        os.path.join(DATA2VEC2_PRETRAINING_DIR, "pretrain-audio", "checkpoint.pt")).save_pretrained(audio)
    common = ["--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--max-seconds", "0.15", "--min-seconds", "0.1"]
    runs = {"image": [ckpt["image"], str(images)], "audio": [str(audio), str(waves)],
            "text": [ckpt["text"], str(texts)]}  # text: the dict.txt beside the checkpoint
    for name, (source, data) in runs.items():
        result = example.main([source, data, "--output", str(tmp_path / f"out-{name}"), *common])
        assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    student = Data2Vec2VisionModel.from_pretrained(tmp_path / "out-image")
    start = Data2Vec2VisionModel.from_pretrained(ckpt["image"])
    assert not np.array_equal(student.encoder.layers[0].attention.qkv_proj.weight.detach().numpy(),
                              start.encoder.layers[0].attention.qkv_proj.weight.detach().numpy())
    assert Data2Vec2AudioModel.from_pretrained(tmp_path / "out-audio").load_report.clean
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        example.main([ckpt["image"], str(tmp_path / "empty"), "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="is a vision model but .* holds 2 speech files"):
        example.main([ckpt["image"], str(waves), "--output", str(tmp_path / "x")])


def test_pretraining_probes_example_runs_both_modalities(monkeypatch):
    """A few steps each: the probes' pipeline end to end (the docs' figures come from full runs).
    Audio reads synthetic clips in place of the speech wheel's (its reader, soundfile, is not a
    test requirement): 9 tinted-noise "languages" x 3 clips, one of them a held-out "pangrama"."""
    probes = _load("pretrain_data2vec2_probes")
    vision = probes.main(["--modality", "vision", "--steps", "3"])
    assert 0.5 < vision["random init"] <= 1 and 0.5 < vision["pretrained"] <= 1  # 10 digits: chance 0.1

    rng = np.random.default_rng(0)

    def synthetic_clips(folder):
        clips = []
        for language in range(9):
            for name in ("a", "b", "pangrama"):
                noise = rng.standard_normal(24000).astype(np.float32)  # 1.5 s at 16 kHz
                clips.append((f"lang{language}", name, np.convolve(noise, np.ones(language + 1), "same")))
        return clips

    monkeypatch.setattr(probes, "load_clips", synthetic_clips)
    audio = probes.main(["--modality", "audio", "--steps", "3", "--batch-size", "4"])
    assert audio["steps"] == 3 and audio["held-out clip chunks"] == 9 * (24000 // probes.CHUNK)
    for probe in ("language, interleaved", "clip, interleaved", "language, held-out clips"):
        for model in ("random init", "pretrained"):
            assert 0 <= audio[f"{probe}, {model}"] <= 1


def test_pretraining_probes_example_fsdd_mode(tmp_path):
    """The spoken-digit mode on a tiny folder named like the Free Spoken Digit Dataset's
    ({digit}_{speaker}_{take}.wav, 8 kHz int16): found by the file names, resampled, FSDD's split
    (takes 0-4 test), the held-out speaker kept out of pretraining; a few steps."""
    from scipy.io import wavfile

    probes = _load("pretrain_data2vec2_probes")
    rng = np.random.default_rng(0)
    for digit in range(10):
        for speaker in ("alice", "bob", "carol"):
            for take in range(8):  # takes 5-7 train: 3 per speaker and digit, enough for 3 CV folds
                n = int(rng.integers(1200, 6400))  # 0.15-0.8 s: some shorter than the crop, some longer
                t = np.arange(n) / 8000
                wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * digit) * t) + 0.05 * rng.standard_normal(n)
                wavfile.write(tmp_path / f"{digit}_{speaker}_{take}.wav", 8000, (wave * 32767).astype(np.int16))
    (tmp_path / "README.md").write_text("not a clip")
    assert probes.is_fsdd(str(tmp_path))
    clips = probes.load_fsdd(str(tmp_path))
    assert len(clips) == 240 and clips[0][:3] == (0, "alice", 0) and clips[0][3].dtype == np.float32
    assert abs(len(clips[0][3]) - 2 * len(wavfile.read(tmp_path / "0_alice_0.wav")[1])) <= 1  # 8 -> 16 kHz

    out = probes.main(["--modality", "audio", "--audio-dir", str(tmp_path), "--steps", "3", "--batch-size", "4",
                       "--held-out-speakers", "carol", "--poolings", "blocks mean,last block mean"])
    assert out["steps"] == 3 and out["pretraining clips"] == 2 * 10 * 3
    assert out["digit, official split, train/test clips"] == "90/150"
    assert out["digit, unseen speakers, train/test clips"] == "60/80"
    for probe in ("digit, official split", "digit, unseen speakers"):
        for model in ("random init", "pretrained", "pretrained, last block mean"):
            assert 0 <= out[f"{probe}, {model}"] <= 1
