"""Every ```python block of README.md and docs/*.md runs, so the docs cannot drift from the code.

Convention (also noted in an HTML comment near the top of README.md):

* Each block runs as written, in a fresh namespace, with a new temporary directory as the
  working directory: relative outputs ("out", "pretrained") land there.
* Placeholder strings stand for files a reader has: every key of ``PLACEHOLDERS`` found in a
  block is replaced by the path its builder returns (tiny local checkpoints, an image), built
  once per session. A new placeholder is one entry there (a builder taking a directory).
* Hub ids stay as written: every key of ``HUB_IDS`` found in a block is served, offline, from
  a fake Hugging Face cache (``tests/hubcache.py``) holding its builder's tiny checkpoint.
* A block that cannot run (partial code, a cluster, a network) is fenced ```python no-run.
  Keep those few: ``test_few_blocks_are_marked_no_run`` counts them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
# data2vec2.md's fairseq snippet and serving.md's four artifact snippets (they read what the
# d2v-export commands above them wrote): export fixtures in PLACEHOLDERS would let them run
MAX_NO_RUN = 5

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


# ----------------------------------------------------------------------------- fixtures
def _vision_classifier(directory: str) -> str:
    """Data2VecVisionForImageClassification at 224x224 (patch 16), 2 labels, tiny widths."""
    import d2v_torch
    from d2v_common.configs import Data2VecVisionConfig

    config = Data2VecVisionConfig(**TINY, num_labels=2, use_relative_position_bias=True)
    d2v_torch.Data2VecVisionForImageClassification(config).save_pretrained(directory)
    return directory


def _vision_with_processor(directory: str) -> str:
    from d2v_common.processing import ImageProcessor

    _vision_classifier(directory)
    ImageProcessor(size=256, crop_size=224).save_pretrained(directory)
    return directory


def _text_with_tokenizer(directory: str) -> str:
    """Data2VecTextForSequenceClassification with a byte-level BPE ``tokenizer.json``."""
    from tokenizers import ByteLevelBPETokenizer

    import d2v_torch
    from d2v_common.configs import Data2VecTextConfig

    bpe = ByteLevelBPETokenizer()
    corpus = ["A first sentence.", "And a second, longer one.", "Data2Vec reads text, audio and images."]
    bpe.train_from_iterator(corpus * 4, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    os.makedirs(directory, exist_ok=True)
    bpe.save(os.path.join(directory, "tokenizer.json"))
    config = Data2VecTextConfig(**TINY, vocab_size=bpe.get_vocab_size(), max_position_embeddings=64, num_labels=2)
    d2v_torch.Data2VecTextForSequenceClassification(config).save_pretrained(directory)
    return directory


def _audio_with_extractor(directory: str) -> str:
    """Data2VecAudioForCTC with its feature extractor and a 12-token CTC ``vocab.json``."""
    import d2v_torch
    from d2v_common.configs import Data2VecAudioConfig
    from d2v_common.processing import AudioFeatureExtractor

    config = Data2VecAudioConfig(**TINY, conv_dim=[16] * 7, vocab_size=12, num_conv_pos_embeddings=2,
                                 num_conv_pos_embedding_groups=4)
    d2v_torch.Data2VecAudioForCTC(config).save_pretrained(directory)
    AudioFeatureExtractor(return_attention_mask=True).save_pretrained(directory)
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C", "D", "E", "F", "G"]  # the CTC vocabulary
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    return directory


def _image_file(directory: str) -> str:
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "cat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)).save(path)
    return path


def _speech_file(directory: str) -> str:
    """1.5 s of 16 kHz mono 16-bit PCM (a tone with noise)."""
    import wave

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "speech.wav")
    t = np.arange(24000) / 16000
    samples = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def _pretraining_checkpoint(directory: str) -> str:
    """A fairseq data2vec 2.0 pretraining checkpoint: the audio fixture (read only)."""
    from tests.fixture_paths import DATA2VEC2_PRETRAINING_DIR

    return os.path.join(DATA2VEC2_PRETRAINING_DIR, "pretrain-audio", "checkpoint.pt")


# placeholder in a doc block -> builder(directory) returning the path that replaces it
PLACEHOLDERS = {
    "path/to/data2vec2-pretraining.pt": _pretraining_checkpoint,
    "path/to/checkpoint": _vision_classifier,
    "path/to/data2vec-vision": _vision_with_processor,
    "path/to/data2vec-text": _text_with_tokenizer,
    "path/to/data2vec-audio": _audio_with_extractor,
    "cat.png": _image_file,
    "speech.wav": _speech_file,
}


# hub id in a doc block -> builder(directory) of the tiny checkpoint the fake hub cache serves
HUB_IDS = {
    "facebook/data2vec-vision-base-ft1k": _vision_classifier,
    "facebook/data2vec-audio-base-960h": _audio_with_extractor,
}


# ------------------------------------------------------------------------------- blocks
_FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def doc_blocks() -> list[tuple[str, int, bool, str]]:
    """``(file, line, runs, code)`` of every ```python block in the doc files."""
    out = []
    for path in DOC_FILES:
        text = open(path, encoding="utf-8").read()
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((os.path.relpath(path, REPO), line, "no-run" not in m.group(1).split(), m.group(2)))
    return out


BLOCKS = doc_blocks()


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A fake hub cache folder; ``add(repo_id)`` puts that id's tiny checkpoint in it once."""
    from tests.hubcache import folder_files, make_hub_cache

    root = tmp_path_factory.mktemp("hub-cache")
    added: set[str] = set()

    def add(repo_id: str) -> str:
        if repo_id not in added:
            folder = HUB_IDS[repo_id](str(tmp_path_factory.mktemp("hub-model") / "model"))
            make_hub_cache(root, repo_id, folder_files(folder))
            added.add(repo_id)
        return str(root)

    return add


@pytest.fixture(scope="session")
def placeholder_paths(tmp_path_factory):
    """Builds each placeholder's fixture on first use."""
    built: dict[str, str] = {}

    def get(placeholder: str) -> str:
        if placeholder not in built:
            directory = str(tmp_path_factory.mktemp(re.sub(r"\W", "_", placeholder)) / "fixture")
            built[placeholder] = PLACEHOLDERS[placeholder](directory)
        return built[placeholder]

    return get


@pytest.mark.parametrize("path, line, runs, code", [b for b in BLOCKS if b[2]], ids=[f"{b[0]}:{b[1]}" for b in BLOCKS if b[2]])
def test_doc_block_runs(path, line, runs, code, placeholder_paths, hub_cache, tmp_path, monkeypatch):
    from tests.hubcache import serve_offline

    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):  # longest first: no partial clashes
        if placeholder in code:
            code = code.replace(placeholder, placeholder_paths(placeholder))
    repos = [repo_id for repo_id in HUB_IDS if repo_id in code]
    serve_offline(monkeypatch, hub_cache(repos[0]) if repos else None)  # never the network
    for repo_id in repos[1:]:
        hub_cache(repo_id)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "newly initialized" head warnings the docs mention
        exec(compile(code, f"{path}:{line}", "exec"), {"__name__": "__doc_block__"})  # noqa: S102 - our docs


def test_blocks_are_found_and_few_are_marked_no_run():
    assert len(BLOCKS) >= 6  # the README alone holds six
    skipped = [f"{p}:{n}" for p, n, runs, _ in BLOCKS if not runs]
    assert len(skipped) <= MAX_NO_RUN, skipped


def test_placeholders_in_use_all_have_builders():
    """A block naming a path/to/... that has no fixture would fail to run: list them all."""
    unknown = set()
    for _, _, runs, code in BLOCKS:
        if runs:
            unknown |= {m for m in re.findall(r"path/to/[\w.-]+", code) if m not in PLACEHOLDERS}
    assert not unknown, f"add builders to PLACEHOLDERS for {sorted(unknown)}"


# ----------------------------------------------------------------------------- "every class" claims
def _registered_architectures() -> list[str]:
    from d2v_common.spec import ARCHITECTURES

    return sorted(ARCHITECTURES)


def test_every_registered_class_is_exportable():
    """docs/serving.md: every class (data2vec 1.0 and 2.0) exports to every format and every
    Keras class has a serving signature. The export tests run over ``EXPORTABLE_ARCHITECTURES``
    (tests/test_export_torch.py, tests/test_export_keras.py); this keeps that set equal to the
    registered classes, so a new class cannot silently fall outside the claim."""
    from d2v_common import export as common

    assert sorted(common.EXPORTABLE_ARCHITECTURES) == _registered_architectures()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", _registered_architectures())
def test_torch_export_works_on_every_registered_class_as_is(architecture):
    """docs/serving.md: ``torch.export.export(model, args=(), kwargs=inputs)`` works on every d2v
    PyTorch class as it is (tiny config, one layer, the export sample's inputs)."""
    import torch

    import d2v_torch
    from crosscheck.cases import all_cases
    from d2v_common import export as common

    config = next(c.config for c in all_cases() if c.architecture == architecture)
    if common.family_of_architecture(architecture) != "vision":  # vision heads may read several layers
        config = config.copy(num_hidden_layers=1)
    torch.manual_seed(0)
    model = getattr(d2v_torch, architecture)(config).eval()
    inputs = {k: torch.from_numpy(v) for k, v in common.sample_inputs(config, architecture).items()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (), inputs, strict=False)
        got, want = program.module()(**inputs), model(**inputs)
    assert type(got) is type(want)
    for field in common.output_fields(architecture):
        if want.get(field) is not None:
            torch.testing.assert_close(got[field], want[field], atol=1e-5, rtol=0)
