"""fairseq dictionaries given to ``d2v-convert --from fairseq --dict``: checked against the model's
vocabulary for every modality, and a CTC model's letter dictionary becomes a tokenizer whose
decoding equals fairseq's. Also: a fairseq checkpoint given without ``--from fairseq``."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

import d2v_torch
from d2v_common.convert import ConversionError, convert
from d2v_common.convert import main as convert_main
from d2v_common.processing.ctc import CTCTokenizer
from tests.fixture_paths import DATA2VEC2_DIR as FIXTURES, FAIRSEQ_DICTS_DIR

LETTER_DICT = os.path.join(FAIRSEQ_DICTS_DIR, "dict.ltr.txt")
CTC_CHECKPOINT = os.path.join(FIXTURES, "audio-ctc", "checkpoint.pt")


# ------------------------------------------------- fairseq's letter decoding, re-done from its rules
def fairseq_symbols(dict_path: str) -> list[str]:
    """fairseq Dictionary ids: <s>, <pad>, </s>, <unk>, then the symbol of each "symbol count" line."""
    with open(dict_path, encoding="utf-8") as f:
        return ["<s>", "<pad>", "</s>", "<unk>"] + [line.rstrip().rsplit(" ", 1)[0] for line in f]


def fairseq_letter_text(ids, symbols: list[str]) -> str:
    """CTC viterbi output as fairseq prints it: merge repeats, drop the blank (<ctc_blank>, else
    the bos id), Dictionary.string (space-joined; bos and eos left out; unk as "<unk>"), then
    post_process "letter" (spaces removed, "|" becomes a space, stripped)."""
    blank = symbols.index("<ctc_blank>") if "<ctc_blank>" in symbols else 0
    merged = [i for i, _ in itertools.groupby(int(i) for i in ids)]
    pieces = " ".join(symbols[i] for i in merged if i != blank and i not in (0, 2))
    return pieces.replace(" ", "").replace("|", " ").strip()


# ids of dict.ltr.txt: 0 blank, 3 <unk>, 4 "|", 5 E, 6 T, 7 A, 8 O, 9 N
ID_SEQUENCES = [
    [5, 5, 6, 6, 6, 7],  # repeats merge
    [5, 0, 5, 6, 0, 0, 6],  # a blank between repeats keeps both
    [4, 6, 8, 4, 4, 0, 4, 7, 9, 4],  # word boundaries: repeated, separated by a blank, at both ends
    [0, 0, 0],  # only blanks
    [9, 3, 3, 0, 3, 4, 7, 3],  # unknowns (merged like any id)
    [5, 4, 0, 4, 6],  # two boundaries apart: two spaces, as fairseq
    [],
]


@pytest.fixture(scope="module")
def ctc_folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ctc") / "out")
    assert convert_main([CTC_CHECKPOINT, out, "--from", "fairseq", "--dict", LETTER_DICT, "--quiet"]) == 0
    return out


def test_letter_dict_becomes_a_tokenizer_that_decodes_like_fairseq(ctc_folder):
    from transformers import Wav2Vec2CTCTokenizer

    for name in ("vocab.json", "tokenizer_config.json", "special_tokens_map.json", "dict.ltr.txt"):
        assert os.path.isfile(os.path.join(ctc_folder, name)), name
    symbols = fairseq_symbols(LETTER_DICT)
    ours, hf = CTCTokenizer.from_pretrained(ctc_folder), Wav2Vec2CTCTokenizer.from_pretrained(ctc_folder)
    config = json.load(open(os.path.join(ctc_folder, "config.json")))
    for tokenizer in (ours, hf):
        assert tokenizer.word_delimiter_token == "|" and tokenizer.word_delimiter_token_id == symbols.index("|")
        assert tokenizer.pad_token_id == 0 == config["pad_token_id"]  # the CTC blank
        assert tokenizer.unk_token_id == 3
    assert len(ours) == len(hf) == config["vocab_size"] == len(symbols)
    texts = [fairseq_letter_text(ids, symbols) for ids in ID_SEQUENCES]
    assert texts[:3] == ["ETA", "EETT", "TO  AN"]  # a blank between boundaries: two spaces
    for ids, text in zip(ID_SEQUENCES, texts):
        assert ours.decode(ids) == text, ids
        assert hf.decode(ids) == text, ids
    assert ours.batch_decode(np.array([ID_SEQUENCES[0]] * 2)) == [texts[0]] * 2


def test_converted_ctc_fixture_transcribes_like_fairseq(ctc_folder):
    """The converted model's frame ids on the fixture input give fairseq's text for fairseq's ids."""
    inputs, outputs = np.load(os.path.join(FIXTURES, "audio-ctc", "inputs.npz")), np.load(
        os.path.join(FIXTURES, "audio-ctc", "outputs.npz"))
    model = d2v_torch.Data2Vec2AudioForCTC.from_pretrained(ctc_folder)
    keep = ~inputs["padding_mask"]
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs["source"]), attention_mask=torch.from_numpy(keep)).logits.numpy()
    valid = ~outputs["padding_mask"]
    ours_ids, upstream_ids = logits.argmax(-1), outputs["logits_btc"].argmax(-1)
    symbols = fairseq_symbols(LETTER_DICT)
    tokenizer = CTCTokenizer.from_pretrained(ctc_folder)
    for row in range(len(valid)):
        ids = upstream_ids[row][valid[row]]
        np.testing.assert_array_equal(ours_ids[row][valid[row]], ids)
        # random weights also pick <pad> / </s>, which a trained CTC model never emits (fairseq
        # prints "<pad>" and drops "</s>", HF-style vocabularies name id 1 "<s>"): blank them for both
        ids = np.where(np.isin(ids, [1, 2]), 0, ids)
        text = fairseq_letter_text(ids, symbols)
        assert len(text.replace(" ", "")) > 5
        assert tokenizer.decode(ids) == text


def test_ctc_blank_symbol_is_the_blank(tmp_path):
    """A letter dictionary with <ctc_blank> makes that id the blank (fairseq's CTC decoders do)."""
    dictionary = tmp_path / "dict.ltr.txt"
    dictionary.write_text("<ctc_blank> 0\n| 10\nE 9\nT 8\nA 7\nO 6\n", encoding="utf-8")
    out = str(tmp_path / "out")
    assert convert_main([CTC_CHECKPOINT, out, "--from", "fairseq", "--dict", str(dictionary), "--quiet"]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["pad_token_id"] == 4
    tokenizer = CTCTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == "<ctc_blank>" and tokenizer.pad_token_id == 4
    symbols = fairseq_symbols(str(dictionary))
    for ids in ([6, 4, 6, 5, 4, 9, 9], [5, 7, 7, 4, 3, 8, 4]):
        assert tokenizer.decode(ids) == fairseq_letter_text(ids, symbols) != ""


@pytest.mark.parametrize(
    "case, lines, expected",
    [
        ("audio-ctc", ["a 1", "b 2"], ["6 symbols", "10 rows", "lm_head", "dict.ltr.txt", "needs 6 entries"]),
        ("audio-ctc", [f"{c} 1" for c in "ABCDEFGHIJ"], ["14 symbols", "10 rows", "needs 6 entries"]),
        ("text-cls", ["a 1", "b 2"], ["7 symbols", "25 rows", "word embedding", "dict.txt", "needs 20 entries"]),
        ("audio-features", ["a 1"], ["Data2Vec2AudioModel", "no vocabulary", "leave --dict out"]),
        ("image-cls", ["a 1"], ["Data2Vec2VisionForImageClassification", "no vocabulary"]),
        ("image-features", ["a 1"], ["no vocabulary"]),
    ],
)
def test_dict_that_does_not_fit_is_an_error_for_every_modality(case, lines, expected, tmp_path, capsys):
    dictionary = tmp_path / "bad.txt"
    dictionary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out"
    ckpt = os.path.join(FIXTURES, case, "checkpoint.pt")
    assert convert_main([ckpt, str(out), "--from", "fairseq", "--dict", str(dictionary)]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, (text, err)
    assert os.listdir(tmp_path) == ["bad.txt"]  # nothing written, no temporary folder left


@pytest.mark.parametrize(
    "content, expected",
    [
        ("| 1\nE\n", "line 2"),  # no count
        ("| 1\nE x\n", "line 2"),  # count not a number
        ("| 1\n\nE 1\n", "line 2"),  # empty line
        ("| 1\nE 1\nE 2\nT 1\nA 1\nO 1\n", "appears twice"),
    ],
)
def test_malformed_letter_dict_is_a_clear_error(content, expected, tmp_path, capsys):
    dictionary = tmp_path / "dict.ltr.txt"
    dictionary.write_text(content, encoding="utf-8")
    assert convert_main([CTC_CHECKPOINT, str(tmp_path / "out"), "--from", "fairseq", "--dict", str(dictionary)]) == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_ctc_without_dict_says_how_to_get_a_tokenizer(tmp_path, capsys):
    assert convert_main([CTC_CHECKPOINT, str(tmp_path / "out"), "--from", "fairseq"]) == 0
    assert "no letter dictionary given, so no tokenizer" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert convert_main([CTC_CHECKPOINT, str(tmp_path / "with"), "--from", "fairseq", "--dict", LETTER_DICT]) == 0
    assert "no letter dictionary" not in capsys.readouterr().out


def test_text_dict_still_checked_and_copied(tmp_path):
    ckpt, dictionary = (os.path.join(FIXTURES, "text-cls", n) for n in ("checkpoint.pt", "dict.txt"))
    out = tmp_path / "out"
    assert convert_main([ckpt, str(out), "--from", "fairseq", "--dict", dictionary, "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "dict.txt", "model.safetensors"]


# ------------------------------------------------------------- a forgotten --from fairseq
@pytest.mark.parametrize("extra", [["--to", "safetensors"], [], ["--dict", LETTER_DICT, "--to", "safetensors"]])
def test_fairseq_checkpoint_without_from_fairseq_names_the_flag(extra, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert_main([CTC_CHECKPOINT, str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert "fairseq checkpoint" in err and "add --from fairseq" in err
    assert "not a directory" not in err
    assert os.listdir(tmp_path) == []


def test_convert_api_recognises_fairseq_file_and_folder(tmp_path):
    with pytest.raises(ConversionError, match="add --from fairseq"):
        convert(CTC_CHECKPOINT, tmp_path / "out", "safetensors")
    folder = tmp_path / "run"  # a folder holding one checkpoint*.pt and no config.json
    folder.mkdir()
    os.symlink(CTC_CHECKPOINT, folder / "checkpoint_best.pt")
    with pytest.raises(ConversionError, match="add --from fairseq"):
        convert(folder, tmp_path / "out", "safetensors")
    # any other file is still "not a directory", with what SRC should be
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ConversionError, match="not a directory; SRC is a checkpoint folder"):
        convert(other, tmp_path / "out", "safetensors")
    assert not os.path.exists(tmp_path / "out")
