"""Loading by hub id: a hub cache built in a temporary folder, served with HF_HUB_OFFLINE=1.

The three repositories are laid out like the real ``facebook/data2vec-*`` ones (``pytorch_model.bin``
on main, the vision one also HF's ``tf_model.h5``, processor and tokenizer files). d2v (both
frameworks) and transformers load the same ids from the same cache and must agree. Online-only
answers of the Hub (unknown repository, gated, ...) are produced by replacing huggingface_hub's
functions, so no test touches the network.
"""

import json
import os
import re
import subprocess
import sys

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers

import d2v_tf
import d2v_torch
from d2v_common.checkpoints import hub as d2v_hub
from d2v_common.checkpoints.formats import CheckpointError
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig, load_config
from d2v_common.convert import main as convert_main
from d2v_common.processing import AudioFeatureExtractor, CTCTokenizer, ImageProcessor, TextTokenizer
from tests.hubcache import FakeHub, folder_files, make_hub_cache, serve_offline
from tests.oracle import random_hf_model

VISION, TEXT = "facebook/data2vec-vision-tiny-ft", "facebook/data2vec-text-tiny"
AUDIO = "facebook/data2vec-audio-tiny-960h"
OLD_COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The character vocabulary of facebook/data2vec-audio-base-960h (as wav2vec2-base-960h's).
CTC_VOCAB = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"])}


def _save(model, folder, **kwargs):
    model.save_pretrained(folder, safe_serialization=False, **kwargs)
    return folder_files(folder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A hub cache with a vision, a text and an audio CTC repository (audio also with an older commit)."""
    root = tmp_path_factory.mktemp("hub")
    work = tmp_path_factory.mktemp("work")

    vision_cfg = transformers.Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3, use_mean_pooling=True, architectures=["Data2VecVisionForImageClassification"],
    )
    vision = _save(random_hf_model("Data2VecVisionForImageClassification", vision_cfg), work / "vision")
    hf_tf = transformers.TFData2VecVisionForImageClassification.from_pretrained(work / "vision", from_pt=True)
    hf_tf.save_pretrained(work / "vision-tf")  # HF's own tf_model.h5
    vision["tf_model.h5"] = (work / "vision-tf" / "tf_model.h5").read_bytes()
    transformers.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(
        work / "vision-proc")
    vision.update(folder_files(work / "vision-proc"))
    make_hub_cache(root, VISION, vision)

    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = ["Hello world, this is a tiny corpus.", "Data2vec learns from text, speech and images."]
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    (work / "bpe").mkdir()
    bpe.save_model(str(work / "bpe"))
    vocab = json.loads((work / "bpe" / "vocab.json").read_text())
    vocab["<mask>"] = len(vocab)
    (work / "bpe" / "vocab.json").write_text(json.dumps(vocab))
    text_cfg = transformers.Data2VecTextConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, type_vocab_size=1, num_labels=3,
        architectures=["Data2VecTextForSequenceClassification"],
    )
    text = _save(random_hf_model("Data2VecTextForSequenceClassification", text_cfg), work / "text")
    text.update(folder_files(work / "bpe"))
    make_hub_cache(root, TEXT, text)

    audio_cfg = transformers.Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, conv_dim=[16, 16],
        conv_stride=[5, 2], conv_kernel=[10, 3], num_conv_pos_embeddings=2, conv_pos_kernel_size=4,
        num_conv_pos_embedding_groups=2, vocab_size=len(CTC_VOCAB), mask_time_prob=0.0,
        architectures=["Data2VecAudioForCTC"],
    )
    (work / "ctc").mkdir()
    (work / "ctc" / "vocab.json").write_text(json.dumps(CTC_VOCAB))
    transformers.Wav2Vec2CTCTokenizer(str(work / "ctc" / "vocab.json")).save_pretrained(work / "ctc-hf")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(work / "ctc-hf")
    for name, seed, commit, refs in (("audio-old", 1, OLD_COMMIT, ()), ("audio", 0, None, ("main",))):
        files = _save(random_hf_model("Data2VecAudioForCTC", audio_cfg, seed=seed), work / name)
        files.update({k: v for k, v in folder_files(work / "ctc-hf").items() if k != "added_tokens.json"})
        make_hub_cache(root, AUDIO, files, commit=commit, refs=refs)
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as both libraries see it now (huggingface_hub read the variable at import)."""
    serve_offline(monkeypatch)


def _hf(cls, repo, cache, **kwargs):
    return getattr(transformers, cls).from_pretrained(repo, cache_dir=cache, local_files_only=True, **kwargs).eval()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _pixels(seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)


# ============================================================================ models by id
def test_vision_by_id_equals_transformers_in_both_frameworks(cache):
    x = _pixels()
    with torch.no_grad():
        want = _hf("Data2VecVisionForImageClassification", VISION, cache)(torch.from_numpy(x)).logits.numpy()
    pt = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(VISION, cache_dir=cache)
    tf = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(VISION, cache_dir=cache)
    assert "(pt-bin)" in pt.load_report.source and pt.load_report.clean
    with torch.no_grad():
        assert _max_diff(pt(torch.from_numpy(x)).logits, want) <= 1e-5
    assert _max_diff(tf(x).logits, want) <= 1e-5


def test_keras_without_torch_reads_tf_model_h5_and_fetches_nothing_else(cache, monkeypatch):
    fetched = []
    real = huggingface_hub.hf_hub_download

    def recording(repo_id, filename, **kwargs):
        fetched.append(filename)
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    monkeypatch.setattr(d2v_hub, "torch_available", lambda: False)
    tf = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(VISION, cache_dir=cache)
    assert fetched == ["config.json", "tf_model.h5"]
    assert "(tf-h5)" in tf.load_report.source
    with torch.no_grad():
        want = _hf("Data2VecVisionForImageClassification", VISION, cache)(torch.from_numpy(_pixels())).logits
    assert _max_diff(tf(_pixels()).logits, want.numpy()) <= 1e-5
    # with torch: the .bin only (the one format chosen), no h5
    monkeypatch.setattr(d2v_hub, "torch_available", lambda: True)
    fetched.clear()
    d2v_torch.Data2VecVisionForImageClassification.from_pretrained(VISION, cache_dir=cache)
    assert fetched == ["config.json", "pytorch_model.bin"]


def test_keras_without_torch_on_a_bin_only_repo_says_which_extra(cache, monkeypatch):
    monkeypatch.setattr(d2v_hub, "torch_available", lambda: False)
    pattern = r"facebook/data2vec-text-tiny.*'main'.*pytorch_model.bin.*needs torch.*d2v\[torch\]"
    with pytest.raises(OSError, match=pattern):
        d2v_tf.TFData2VecTextForSequenceClassification.from_pretrained(TEXT, cache_dir=cache)


def test_text_by_id_model_and_tokenizer_equal_transformers(cache):
    hf_tok = transformers.RobertaTokenizerFast.from_pretrained(TEXT, cache_dir=cache, local_files_only=True)
    tok = TextTokenizer.from_pretrained(TEXT, cache_dir=cache)
    texts = ["Hello world, data2vec.", "A tiny corpus of text and images"]
    batch, want_ids = tok(texts, padding=True), hf_tok(texts, padding=True)
    assert np.asarray(batch["input_ids"]).tolist() == want_ids["input_ids"]
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    with torch.no_grad():
        hf = _hf("Data2VecTextForSequenceClassification", TEXT, cache)
        want = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        pt = d2v_torch.Data2VecTextForSequenceClassification.from_pretrained(TEXT, cache_dir=cache)
        got_pt = pt(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    tf = d2v_tf.TFData2VecTextForSequenceClassification.from_pretrained(TEXT, cache_dir=cache)
    assert _max_diff(got_pt, want) <= 1e-5 and _max_diff(tf(ids, attention_mask=mask).logits, want) <= 1e-5
    assert tok.decode(ids[0], skip_special_tokens=True) == hf_tok.decode(ids[0], skip_special_tokens=True)


def _waves(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(1600).astype(np.float32), rng.standard_normal(1200).astype(np.float32)]


def test_audio_raw_waves_to_transcript_equal_transformers_in_both_frameworks(cache):
    """raw audio -> AudioFeatureExtractor -> model -> CTCTokenizer.batch_decode, all by id."""
    hf_fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(AUDIO, cache_dir=cache, local_files_only=True)
    hf_tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(AUDIO, cache_dir=cache, local_files_only=True)
    hf = _hf("Data2VecAudioForCTC", AUDIO, cache)
    with torch.no_grad():
        want = hf(**hf_fe(_waves(), sampling_rate=16000, padding=True, return_tensors="pt")).logits.numpy()
    extractor = AudioFeatureExtractor.from_pretrained(AUDIO, cache_dir=cache)
    tokenizer = CTCTokenizer.from_pretrained(AUDIO, cache_dir=cache)
    pt = d2v_torch.Data2VecAudioForCTC.from_pretrained(AUDIO, cache_dir=cache)
    tf = d2v_tf.TFData2VecAudioForCTC.from_pretrained(AUDIO, cache_dir=cache)
    with torch.no_grad():
        logits_pt = pt(**extractor(_waves(), sampling_rate=16000, padding=True, return_tensors="pt")).logits.numpy()
    logits_tf = np.asarray(tf(**extractor(_waves(), sampling_rate=16000, padding=True, return_tensors="tf")).logits)
    assert _max_diff(logits_pt, want) <= 1e-5 and _max_diff(logits_tf, want) <= 1e-5
    expected = hf_tok.batch_decode(want.argmax(-1))
    assert tokenizer.batch_decode(logits_pt.argmax(-1)) == expected
    assert tokenizer.batch_decode(logits_tf.argmax(-1)) == expected
    assert any(expected)  # something a person reads


def test_older_snapshot_loads_by_revision(cache):
    x = _waves()[0][None]
    with torch.no_grad():
        old_hf = _hf("Data2VecAudioForCTC", AUDIO, cache, revision=OLD_COMMIT)(torch.from_numpy(x)).logits.numpy()
        new_hf = _hf("Data2VecAudioForCTC", AUDIO, cache)(torch.from_numpy(x)).logits.numpy()
        old = d2v_torch.Data2VecAudioForCTC.from_pretrained(AUDIO, cache_dir=cache, revision=OLD_COMMIT)
        got_pt = old(torch.from_numpy(x)).logits.numpy()
    old_tf = d2v_tf.TFData2VecAudioForCTC.from_pretrained(AUDIO, cache_dir=cache, revision=OLD_COMMIT)
    got_tf = np.asarray(old_tf(x).logits)
    assert _max_diff(old_hf, new_hf) > 1e-3  # the snapshots differ
    assert _max_diff(got_pt, old_hf) <= 1e-5 and _max_diff(got_tf, old_hf) <= 1e-5


def test_configs_processors_and_pretraining_by_id(cache):
    for cls, repo in ((Data2VecVisionConfig, VISION), (Data2VecTextConfig, TEXT), (Data2VecAudioConfig, AUDIO)):
        hf_cfg = transformers.AutoConfig.from_pretrained(repo, cache_dir=cache, local_files_only=True)
        ours = cls.from_pretrained(repo, cache_dir=cache)
        assert {k: getattr(ours, k) for k in ours.FIELDS} == {k: getattr(hf_cfg, k) for k in ours.FIELDS}
        assert ours.architectures == hf_cfg.architectures and ours.id2label == hf_cfg.id2label
    assert cls.from_pretrained(repo, cache_dir=cache, hidden_dropout=0.3).hidden_dropout == 0.3
    hf_proc = transformers.BeitImageProcessor.from_pretrained(VISION, cache_dir=cache, local_files_only=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    got = ImageProcessor.from_pretrained(VISION, cache_dir=cache)(image)["pixel_values"]
    assert _max_diff(got, hf_proc(image, return_tensors="np")["pixel_values"]) <= 1e-5
    hf_fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(AUDIO, cache_dir=cache, local_files_only=True)
    got = AudioFeatureExtractor.from_pretrained(AUDIO, cache_dir=cache)(_waves(), padding=True)["input_values"]
    assert _max_diff(got, hf_fe(_waves(), padding=True, return_tensors="np")["input_values"]) <= 1e-5
    ids = np.array([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        want = _hf("Data2VecTextModel", TEXT, cache)(torch.from_numpy(ids)).last_hidden_state.numpy()
    for model in (d2v_torch.Data2VecTextForPreTraining, d2v_tf.TFData2VecTextForPreTraining):
        quiet = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        pretraining = model.from_pretrained(TEXT, cache_dir=cache, **quiet)
        assert pretraining.config.hidden_dropout_prob == 0.0
        student = pretraining.student(torch.from_numpy(ids) if model.__module__.startswith("d2v_torch") else ids)
        assert _max_diff(student.last_hidden_state.detach() if hasattr(student.last_hidden_state, "detach")
                         else student.last_hidden_state, want) <= 1e-5


def test_a_local_directory_of_that_name_wins(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Data2VecAudioConfig(hidden_size=48, num_attention_heads=4).save_pretrained(tmp_path / AUDIO)
    assert Data2VecAudioConfig.from_pretrained(AUDIO, cache_dir=cache).hidden_size == 48
    assert Data2VecAudioConfig.from_pretrained(AUDIO, cache_dir=cache, local_files_only=True).hidden_size == 48
    monkeypatch.chdir(cache)
    assert Data2VecAudioConfig.from_pretrained(AUDIO, cache_dir=cache).hidden_size == 32  # no such folder here


def test_hub_cache_env_and_converter_cli(cache, tmp_path):
    """HF_HUB_CACHE + HF_HUB_OFFLINE=1 in a fresh process: d2v-convert SRC as a hub id; the result
    loads without torch's .bin reader and equals the source."""
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    out = tmp_path / "converted"
    command = [sys.executable, "-m", "d2v_common.convert", AUDIO, str(out), "--to", "safetensors", "--quiet"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                       "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    x = _waves()[0][None]
    with torch.no_grad():
        want = _hf("Data2VecAudioForCTC", AUDIO, cache)(torch.from_numpy(x)).logits.numpy()
    assert _max_diff(d2v_tf.TFData2VecAudioForCTC.from_pretrained(out)(x).logits, want) <= 1e-5
    assert CTCTokenizer.from_pretrained(out).get_vocab() == CTC_VOCAB
    assert convert_main([TEXT, str(tmp_path / "t"), "--to", "safetensors", "--quiet", "--cache-dir", str(cache),
                         "--revision", "nope"]) == 2


# ============================================================================ errors
def test_offline_errors_name_the_id_revision_and_fix(cache, tmp_path):
    with pytest.raises(OSError, match=r"'facebook/no-such-model' \(revision 'main'\).*not in the local hub cache.*"
                       r"drop offline mode"):
        d2v_torch.Data2VecAudioForCTC.from_pretrained("facebook/no-such-model", cache_dir=cache)
    with pytest.raises(OSError, match=r"data2vec-audio-tiny-960h' \(revision 'v2.0'\).*not in the local hub cache"):
        Data2VecAudioConfig.from_pretrained(AUDIO, cache_dir=cache, revision="v2.0")
    with pytest.raises(OSError, match=r"data2vec-text-tiny' \(revision 'main'\): no preprocessor_config.json.*"
                       r"Offline.*drop offline mode"):
        AudioFeatureExtractor.from_pretrained(TEXT, cache_dir=cache)
    with pytest.raises(OSError, match=r"neither a local file or directory nor a valid Hugging Face Hub id"):
        Data2VecAudioConfig.from_pretrained("bad--name/x", cache_dir=cache)
    with pytest.raises(OSError, match="not in the local hub cache"):  # an empty cache: nothing cached
        CTCTokenizer.from_pretrained(AUDIO, cache_dir=tmp_path / "empty")


@pytest.fixture
def online(monkeypatch):
    """Online mode whose Hub answers are set per test (huggingface_hub's functions replaced)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def answer(listing=None, listing_error=None, download_error=None, folder=None, calls=None):
        def list_repo_files(self, repo_id, revision=None, token=None, **kwargs):
            if listing_error is not None:
                raise listing_error
            return listing

        def hf_hub_download(repo_id, filename, **kwargs):
            if calls is not None:
                calls.append((repo_id, filename, kwargs))
            if download_error is not None:
                raise download_error
            return os.path.join(folder, filename)

        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)

    return answer


@pytest.mark.parametrize(
    "error, pattern",
    [
        (huggingface_hub.errors.RepositoryNotFoundError("404"), r"'org/model' \(revision 'main'\) is neither a local "
         r"directory nor a repository on the Hugging Face Hub.*log in"),
        (huggingface_hub.errors.GatedRepoError("403"), r"'org/model' \(revision 'main'\) is a gated repository: accept "
         r"its conditions at https://huggingface.co/org/model, then log in"),
        (huggingface_hub.errors.RevisionNotFoundError("404"), r"'org/model' \(revision 'main'\): the revision does not "
         r"exist.*pick another revision"),
    ],
)
def test_online_repository_errors(online, error, pattern, tmp_path):
    online(listing_error=error)
    with pytest.raises(OSError, match=pattern):
        d2v_tf.TFData2VecAudioForCTC.from_pretrained("org/model", cache_dir=tmp_path)


def test_online_file_errors(online, tmp_path):
    online(listing=["config.json", "README.md"])
    with pytest.raises(OSError, match=r"'org/model' \(revision 'v1'\): no weights: looked for model.safetensors.*"
                       r"pick another revision"):
        d2v_torch.Data2VecAudioForCTC.from_pretrained("org/model", cache_dir=tmp_path, revision="v1")
    online(listing=["config.json"], download_error=huggingface_hub.errors.EntryNotFoundError("404"))
    with pytest.raises(OSError, match=r"'org/model' \(revision 'main'\) has no file config.json"):
        Data2VecAudioConfig.from_pretrained("org/model", cache_dir=tmp_path)
    online(listing=["config.json"], download_error=huggingface_hub.errors.GatedRepoError("403"))
    with pytest.raises(OSError, match=r"gated repository.*token="):
        Data2VecAudioConfig.from_pretrained("org/model", cache_dir=tmp_path, token=False)


def test_corrupt_cached_file_gives_the_local_error(cache, tmp_path):
    snapshot = huggingface_hub.snapshot_download(TEXT, cache_dir=cache, local_files_only=True)
    data = dict(folder_files(snapshot))
    data["pytorch_model.bin"] = data["pytorch_model.bin"][:1000]  # truncated download
    make_hub_cache(tmp_path / "hub", "org/broken", data)
    (tmp_path / "local").mkdir()
    for name, content in data.items():
        (tmp_path / "local" / name).write_bytes(content)
    with pytest.raises(CheckpointError) as local:
        d2v_torch.Data2VecTextForSequenceClassification.from_pretrained(tmp_path / "local")
    with pytest.raises(CheckpointError) as cached:
        d2v_torch.Data2VecTextForSequenceClassification.from_pretrained("org/broken", cache_dir=tmp_path / "hub")
    assert "refused to load" in str(cached.value) and "models--org--broken" in str(cached.value)
    assert str(local.value).split(":", 1)[1] == str(cached.value).split(":", 1)[1]


def test_without_huggingface_hub_a_hub_id_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"huggingface_hub.*pip install 'd2v\[hub\]'"):
        Data2VecVisionConfig.from_pretrained("facebook/data2vec-vision-base-ft1k")
    with pytest.raises(FileNotFoundError, match="no such folder or hub id"):  # local paths never need it
        Data2VecVisionConfig.from_pretrained(tmp_path / "missing")


# ============================================================================ CTC tokenizer
CTC_OPTIONS = [
    {},
    {"group_tokens": False},
    {"skip_special_tokens": True},
    {"skip_special_tokens": True, "group_tokens": False},
    {"spaces_between_special_tokens": True},
    {"clean_up_tokenization_spaces": True},
    {"output_char_offsets": True},
    {"output_word_offsets": True, "group_tokens": False},
    {"output_char_offsets": True, "output_word_offsets": True, "skip_special_tokens": True},
]


@pytest.mark.parametrize("options", CTC_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("config", [{}, {"do_lower_case": True, "word_delimiter_token": "'", "pad_token": "|"}],
                         ids=["real", "other-tokens"])
def test_ctc_batch_decode_equals_hf(cache, tmp_path, options, config):
    snapshot = huggingface_hub.snapshot_download(AUDIO, cache_dir=cache, local_files_only=True)
    hf = transformers.Wav2Vec2CTCTokenizer.from_pretrained(snapshot, **config)
    ours = CTCTokenizer.from_pretrained(AUDIO, cache_dir=cache, **config)
    rng = np.random.default_rng(len(options))
    # frame ids as a CTC head emits them: long runs of blanks and repeats, every id present
    batch = np.repeat(rng.integers(0, len(CTC_VOCAB), (6, 40)), rng.integers(1, 4, 40), axis=1)
    batch[:, ::7] = 0
    want, got = hf.batch_decode(batch, **options), ours.batch_decode(batch, **options)
    if isinstance(want, str) or isinstance(want, list):
        assert got == want
    else:
        assert list(got.keys()) == list(want.keys())
        for key in got.keys():
            assert got[key] == want[key], key
    assert ours.decode(batch[0], **options) == hf.decode(batch[0], **options)


def test_ctc_tokenizer_round_trip_and_bad_ids(tmp_path, cache):
    ours = CTCTokenizer.from_pretrained(AUDIO, cache_dir=cache)
    ours.save_pretrained(tmp_path)
    hf = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    ids = [[5, 5, 0, 6, 4, 4, 7, 1, 2]]
    assert CTCTokenizer.from_pretrained(tmp_path).batch_decode(ids) == hf.batch_decode(ids) == ours.batch_decode(ids)
    assert ours.pad_token_id == 0 and ours.word_delimiter_token_id == 4 and len(ours) == 32
    with pytest.raises(ValueError, match=r"token ids \[32\] are not in the vocabulary"):
        ours.decode([1, 32])
    with pytest.raises(ValueError, match="use batch_decode"):
        ours.decode(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="must be integers"):
        ours.decode(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="pass target_lang="):
        CTCTokenizer({"eng": {"<pad>": 0}, "fra": {"<pad>": 0}})
    multi = CTCTokenizer({"eng": {"<pad>": 0, "A": 1}, "fra": {"<pad>": 0, "B": 1}}, target_lang="fra")
    assert multi.decode([1, 1, 0, 1]) == "BB"


def test_hub_keywords_reach_huggingface_hub(online, cache, tmp_path):
    snapshot = huggingface_hub.snapshot_download(VISION, cache_dir=cache, local_files_only=True)
    calls = []
    online(listing=sorted(os.listdir(snapshot)) + ["README.md", "sub/file.txt"], folder=snapshot, calls=calls)
    config = Data2VecVisionConfig.from_pretrained("org/model", revision="v1", cache_dir=tmp_path, token="hf_x",
                                                  force_download=True)
    assert config.hidden_size == 32
    assert calls == [("org/model", "config.json", dict(local_files_only=False, revision="v1", cache_dir=tmp_path,
                                                        token="hf_x", force_download=True))]
    calls.clear()
    ImageProcessor.from_pretrained("org/model")
    assert [c[1] for c in calls] == ["preprocessor_config.json"]


def test_force_download_offline_is_refused():
    with pytest.raises(ValueError, match="force_download=True needs the Hub, but offline mode is on"):
        Data2VecVisionConfig.from_pretrained("org/model", force_download=True)


def test_unreachable_hub_falls_back_to_the_cache(online, cache):
    """No connection (or a Hub error) while listing: the cached snapshot serves, as in huggingface_hub."""
    snapshot = huggingface_hub.snapshot_download(AUDIO, cache_dir=cache, local_files_only=True)
    for error in (ConnectionError("no route to host"), huggingface_hub.errors.HfHubHTTPError("503")):
        calls = []
        online(listing_error=error, folder=snapshot, calls=calls)
        assert load_config(AUDIO, cache_dir=cache).vocab_size == len(CTC_VOCAB)
        assert calls == [(AUDIO, "config.json", dict(local_files_only=True, revision=None, cache_dir=cache, token=None,
                                                     force_download=False))]


LOOPBACK_CLIENT = """
import sys, numpy as np, torch
import d2v_torch
from d2v_common.configs import Data2VecVisionConfig
from d2v_common.processing import CTCTokenizer

def error(call):
    try:
        call()
    except OSError as e:
        return str(e)
    return "no error"

pt = d2v_torch.Data2VecVisionForImageClassification.from_pretrained("org/vision")
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
print("LOGITS", pt(torch.from_numpy(x)).logits.detach().numpy().tolist())
print("MISSING", error(lambda: Data2VecVisionConfig.from_pretrained("org/missing")))
print("GATED", error(lambda: Data2VecVisionConfig.from_pretrained("org/gated")))
print("REVISION", error(lambda: Data2VecVisionConfig.from_pretrained("org/vision", revision="v9")))
print("ENTRY", error(lambda: CTCTokenizer.from_pretrained("org/vision")))
print("TOKEN", Data2VecVisionConfig.from_pretrained("org/gated", token="hf_test").hidden_size)
"""


def test_online_through_huggingface_hub_against_a_loopback_hub(cache, tmp_path):
    """The real online path (listing, HEAD + GET, refs written, errors from the Hub's headers)
    against a Hub served on 127.0.0.1, in a process whose HF_ENDPOINT points there; afterwards
    the same id loads offline from the cache it filled."""
    snapshot = huggingface_hub.snapshot_download(VISION, cache_dir=cache, local_files_only=True)
    files = folder_files(snapshot)
    online_cache = tmp_path / "hub"
    with FakeHub({"org/vision": {"main": files}, "org/gated": {"main": files}}, gated=("org/gated",)) as fake:
        env = dict(os.environ, HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(online_cache),
                   HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1", PYTHONPATH=ROOT)
        run = subprocess.run([sys.executable, "-c", LOOPBACK_CLIENT], env=env, capture_output=True, text=True,
                             timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    downloads = sorted({p.rsplit("/", 1)[1] for m, p in fake.requests if m == "GET" and "/resolve/" in p})
    assert downloads == ["config.json", "pytorch_model.bin"]  # one weight format, nothing else
    assert re.search(r"'org/missing' \(revision 'main'\) is neither a local directory nor a repository", out["MISSING"])
    assert re.search(r"'org/gated' \(revision 'main'\) is a gated repository.*log in", out["GATED"])
    assert re.search(r"'org/vision' \(revision 'v9'\): the revision does not exist.*pick another", out["REVISION"])
    assert re.search(r"'org/vision' \(revision 'main'\): no vocab.json .*See https://huggingface.co/"
                     r"org/vision/tree/main", out["ENTRY"])
    assert out["TOKEN"] == "32"
    want = np.array(json.loads(out["LOGITS"]), dtype=np.float32)
    offline = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained("org/vision", cache_dir=online_cache)
    assert _max_diff(offline(_pixels()).logits, want) <= 1e-5


@pytest.mark.parametrize("config", [{}, {"do_lower_case": True}], ids=["real", "lower-case"])
def test_ctc_encoding_equals_hf(cache, config):
    snapshot = huggingface_hub.snapshot_download(AUDIO, cache_dir=cache, local_files_only=True)
    hf = transformers.Wav2Vec2CTCTokenizer.from_pretrained(snapshot, **config)
    ours = CTCTokenizer.from_pretrained(AUDIO, cache_dir=cache, **config)
    texts = ["HELLO WORLD", "hello world", " A  B ", "IT'S \u00e99 OK", "", "A<unk>B", "A <pad>  B", "A|B"]
    for text in texts:
        assert ours(text)["input_ids"] == hf(text)["input_ids"], text
    assert dict(ours(texts[:3], padding=True)) == dict(hf(texts[:3], padding=True))
    got, want = ours(texts[:3], padding=True, return_tensors="np"), hf(texts[:3], padding=True, return_tensors="np")
    assert all(np.array_equal(got[k], want[k]) for k in want) and set(got) == set(want)
    with pytest.raises(ValueError, match="pad them"):
        ours(texts[:3], return_tensors="np")
    assert ours.batch_decode(ours(["HELLO WORLD", "IT'S OK"], padding=True)["input_ids"], group_tokens=False) == [
        ("hello world" if config else "HELLO WORLD"), ("it's ok" if config else "IT'S OK")]


def test_sharded_safetensors_repo_fetches_index_and_shards(cache, tmp_path, monkeypatch):
    config = transformers.Data2VecTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=37, max_position_embeddings=64)
    hf = random_hf_model("Data2VecTextModel", config)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")  # HF's sharded safetensors layout
    files = folder_files(tmp_path / "sharded")
    shards = sorted(n for n in files if n.startswith("model-"))
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    make_hub_cache(tmp_path / "hub", "org/sharded", {**files, "pytorch_model.bin": b"never read"})
    fetched = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: fetched.append(filename) or real(repo_id, filename, **kw))
    model = d2v_torch.Data2VecTextModel.from_pretrained("org/sharded", cache_dir=tmp_path / "hub")
    assert fetched == ["config.json", "model.safetensors.index.json", *shards]
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        assert _max_diff(model(ids).last_hidden_state, hf(ids).last_hidden_state) <= 1e-5
