"""CTC ids <-> text: the character vocabulary of speech recognisers (``Wav2Vec2CTCTokenizer`` files).

Transcripts become label ids (``tokenizer(texts)``), and a CTC model's ids become text: the
model emits one id per audio frame. Decoding merges runs of the same id, drops the blank
(the pad token) and turns the word delimiter (``|``) into a space, so ``argmax(logits)`` of
``Data2VecAudioForCTC`` becomes a transcript. Files: ``vocab.json`` (token -> id, or one such
table per language with ``target_lang``), ``tokenizer_config.json`` and
``special_tokens_map.json`` when present; pure Python and numpy.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

import numpy as np

from d2v_common.checkpoints.hub import HubFileMissing, pop_hub_options, resolve_pretrained
from d2v_common.models.outputs import ModelOutput
from d2v_common.processing.base import (
    BatchFeature,
    as_numpy,
    check_return_tensors,
    token_id_sequence,
    clean_up_tokenization,
    read_json,
    stack_or_list,
    write_json,
)

VOCAB_FILE = "vocab.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
COMPATIBLE_CLASSES = ("Wav2Vec2CTCTokenizer",)
# Special-token roles and their defaults, in the order missing ones get new ids (as in HF).
SPECIAL_ROLES = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


class CTCTokenizerOutput(ModelOutput):
    """``decode`` with offsets: ``text``, ``char_offsets`` and ``word_offsets`` (lists of dicts
    with ``char``/``word``, ``start_offset``, ``end_offset`` in frames)."""

    fields = ("text", "char_offsets", "word_offsets")


def _token_text(value: Any, role: str) -> str:
    """A special token given as a string or as HF's AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{role} must be a string or a token dict with 'content', got {value!r}")


def _ctc_files(available: set[str]) -> list[str]:
    if VOCAB_FILE not in available:
        raise HubFileMissing(f"no {VOCAB_FILE} (a CTC tokenizer's vocabulary)")
    return [VOCAB_FILE, *(n for n in (CONFIG_FILE, SPECIAL_MAP_FILE, ADDED_TOKENS_FILE) if n in available)]


class CTCTokenizer:
    """Decodes CTC ids into text, with the rules and options of HF's ``Wav2Vec2CTCTokenizer``.

    Args:
        vocab: token -> id, or ``{language: {token: id}}`` for a multilingual vocabulary.
        bos_token, eos_token, unk_token, pad_token: special tokens; ``pad_token`` is the CTC
            blank. A special token missing from the vocabulary gets the next free id.
        word_delimiter_token: the token between words (``"|"``).
        replace_word_delimiter_char: what the delimiter becomes in text (``" "``).
        do_lower_case: lower-case the decoded text (the vocabularies are upper case).
        target_lang: the language of a multilingual vocabulary.
        clean_up_tokenization_spaces: remove spaces before punctuation when decoding.
        additional_special_tokens: more tokens treated as special by ``skip_special_tokens``.
        added_tokens: token -> id beyond the vocabulary.
        extra_config: other ``tokenizer_config.json`` keys, written back by ``save_pretrained``.

    Examples:
        >>> tokenizer = CTCTokenizer.from_pretrained("facebook/data2vec-audio-base-960h")
        >>> tokenizer.batch_decode(logits.argmax(-1))  # ["A MAN SAID TO THE UNIVERSE", ...]
    """

    model_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        vocab: dict,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        word_delimiter_token: str = "|",
        replace_word_delimiter_char: str = " ",
        do_lower_case: bool = False,
        target_lang: str | None = None,
        clean_up_tokenization_spaces: bool = False,
        additional_special_tokens: list[str] | tuple[str, ...] = (),
        added_tokens: dict[str, int] | None = None,
        extra_config: dict | None = None,
    ):
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError(f"vocab must be a non-empty dict of token -> id, got {type(vocab).__name__}")
        self.vocab = vocab
        self.target_lang = target_lang
        self.encoder = self._language_table(vocab, target_lang)
        self.word_delimiter_token = word_delimiter_token
        self.replace_word_delimiter_char = str(replace_word_delimiter_char)
        self.do_lower_case = bool(do_lower_case)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.extra_config = dict(extra_config or {})
        self.special_tokens = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                               "pad_token": pad_token}
        self.additional_special_tokens = list(additional_special_tokens)
        self.added_tokens: dict[str, int] = {}
        for token, index in (added_tokens or {}).items():
            self._add_token(token, index)
        for token in [*self.special_tokens.values(), *self.additional_special_tokens]:
            if token not in self.encoder and token not in self.added_tokens:
                self._add_token(token, len(self))
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.decoder.update({i: t for t, i in self.added_tokens.items()})
        self.all_special_tokens = [*dict.fromkeys([*self.special_tokens.values(), *self.additional_special_tokens])]
        self.all_special_ids = [self.token_to_id(t) for t in self.all_special_tokens]

    @staticmethod
    def _language_table(vocab: dict, target_lang: str | None) -> dict[str, int]:
        nested = all(isinstance(v, dict) for v in vocab.values())
        if target_lang is not None:
            if not nested or target_lang not in vocab:
                langs = ", ".join(sorted(vocab)) if nested else "none: the vocabulary is not multilingual"
                raise ValueError(f"target_lang {target_lang!r} is not in the vocabulary (languages: {langs})")
            table = vocab[target_lang]
        elif nested:
            raise ValueError(f"this vocabulary has one table per language: pass target_lang= (one of "
                             f"{', '.join(sorted(vocab)[:10])}{', ...' if len(vocab) > 10 else ''})")
        else:
            table = vocab
        for token, index in table.items():
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"vocabulary id of {token!r} must be a non-negative integer, got {index!r}")
        if len(set(table.values())) != len(table):
            raise ValueError("the vocabulary gives the same id to several tokens")
        return dict(table)

    def _add_token(self, token: str, index: int) -> None:
        if token in self.encoder:
            return  # already in the vocabulary, under its own id
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"added token {token!r} needs a non-negative integer id, got {index!r}")
        if index in self.encoder.values() or index in self.added_tokens.values():
            raise ValueError(f"added token {token!r} reuses id {index}")
        self.added_tokens[token] = index

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "CTCTokenizer":
        """Load ``vocab.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``,
        ``added_tokens.json`` when present) from a directory or a Hugging Face Hub id.

        ``overrides`` replace tokenizer_config.json entries (e.g. ``target_lang="eng"``); the
        hub keywords ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
        ``force_download`` are HF's.
        """
        path = resolve_pretrained(path, _ctc_files, **pop_hub_options(overrides))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a directory")
        file = lambda name: os.path.join(path, name)  # noqa: E731
        if not os.path.isfile(file(VOCAB_FILE)):
            raise FileNotFoundError(f"no {VOCAB_FILE} in {path!r}")
        vocab = read_json(file(VOCAB_FILE))
        config = {**(read_json(file(CONFIG_FILE)) if os.path.isfile(file(CONFIG_FILE)) else {}), **overrides}
        kind = config.pop("tokenizer_class", None)
        if kind is not None and kind not in COMPATIBLE_CLASSES:
            raise ValueError(f"CTCTokenizer reads {COMPATIBLE_CLASSES} files, not {kind!r}")
        special_map = read_json(file(SPECIAL_MAP_FILE)) if os.path.isfile(file(SPECIAL_MAP_FILE)) else {}
        specials = {
            role: _token_text(config.pop(role, special_map.get(role, default)), role)
            for role, default in SPECIAL_ROLES.items()
        }
        additional = config.pop("additional_special_tokens", special_map.get("additional_special_tokens", []))
        added = read_json(file(ADDED_TOKENS_FILE)) if os.path.isfile(file(ADDED_TOKENS_FILE)) else {}
        for index, fields in (config.pop("added_tokens_decoder", None) or {}).items():
            added.setdefault(_token_text(fields, "added token"), int(index))
        known = ("word_delimiter_token", "replace_word_delimiter_char", "do_lower_case", "target_lang",
                 "clean_up_tokenization_spaces")
        options = {k: config.pop(k) for k in known if k in config}
        if "word_delimiter_token" in options:
            options["word_delimiter_token"] = _token_text(options["word_delimiter_token"], "word_delimiter_token")
        return cls(
            vocab,
            **specials,
            **options,
            additional_special_tokens=[_token_text(t, "additional special token") for t in additional],
            added_tokens=added,
            extra_config=config,
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (readable by HF)."""
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        config = {
            **self.extra_config,
            **self.special_tokens,
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "word_delimiter_token": self.word_delimiter_token,
            "replace_word_delimiter_char": self.replace_word_delimiter_char,
            "do_lower_case": self.do_lower_case,
            "target_lang": self.target_lang,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "additional_special_tokens": self.additional_special_tokens,
            "added_tokens_decoder": {
                str(i): {"content": t, "special": t in self.all_special_tokens}
                for t, i in sorted(self.added_tokens.items(), key=lambda item: item[1])
            },
        }
        special_map = {**self.special_tokens, "additional_special_tokens": self.additional_special_tokens}
        paths = [os.path.join(directory, n) for n in (VOCAB_FILE, CONFIG_FILE, SPECIAL_MAP_FILE)]
        for path, data in zip(paths, (self.vocab, config, special_map)):
            write_json(path, data)
        return paths

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        return len(self.encoder) + len(self.added_tokens)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (added tokens not counted, as in HF)."""
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self.added_tokens}

    def __getattr__(self, name: str) -> Any:
        # pad_token, pad_token_id, word_delimiter_token_id, ... as in HF
        specials = self.__dict__.get("special_tokens", {})
        if name in specials:
            return specials[name]
        if name.endswith("_token_id") and (name[: -len("_id")] in specials or name == "word_delimiter_token_id"):
            return self.token_to_id(getattr(self, name[: -len("_id")]))
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        return self.encoder.get(token)

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> list[str] | str:
        """Token strings of ids (one string for a single id), special ones dropped if asked."""
        if as_numpy(ids).ndim == 0:
            return self.decoder[int(self._ids(ids)[0])]
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.decoder[i] for i in self._ids(ids).tolist() if i not in skip]

    def _ids(self, token_ids: Any) -> np.ndarray:
        ids = token_id_sequence(token_ids)
        bad = sorted({i for i in ids.tolist() if i not in self.decoder})
        if bad:
            raise ValueError(f"token ids {bad[:5]} are not in the vocabulary (ids 0..{len(self) - 1}); does the "
                             "model's vocab_size match this tokenizer?")
        return ids

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> list[str]:
        """Characters of ``text`` as tokens: spaces become the word delimiter, the text is upper-cased
        with ``do_lower_case``, and multi-character tokens of the vocabulary (``<unk>``) stay whole,
        the spaces around them dropped (HF's rules)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        whole = sorted((t for t in self.get_vocab() if len(t) > 1), key=len, reverse=True)
        pieces = re.split(r"\s*(" + "|".join(map(re.escape, whole)) + r")\s*", text) if whole else [text]
        tokens: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # a whole token matched by the split
                tokens.append(piece)
                continue
            piece = piece.upper() if self.do_lower_case else piece
            tokens += list(piece.replace(" ", self.word_delimiter_token))
        return tokens

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        unk = self.token_to_id(self.special_tokens["unk_token"])
        """Ids of tokens; a token outside the vocabulary is the unknown token's id."""
        vocab, unk = self.get_vocab(), self.token_to_id(self.special_tokens["unk_token"])
        ids = [vocab.get(t, unk) for t in ([tokens] if isinstance(tokens, str) else tokens)]
        return ids[0] if isinstance(tokens, str) else ids

    def __call__(
        self, text: str | list[str], padding: bool | str = False, return_tensors: str | None = None,
        return_attention_mask: bool = True,
    ) -> BatchFeature:
        """Ids of transcripts (the labels of CTC training): one text or a batch.

        Args:
            text: a string or a list of strings.
            padding: True / "longest" pads a batch with the pad id to its longest text.
            return_tensors: None (lists), "np", "pt" or "tf".
            return_attention_mask: also return ``attention_mask``.

        Returns:
            ``BatchFeature`` with ``input_ids`` (and ``attention_mask``).
        """
        check_return_tensors(return_tensors)
        single = isinstance(text, str)
        if not single and not (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
            raise TypeError("text must be a string or a list of strings")
        if padding not in (False, True, "longest", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'do_not_pad'; got {padding!r}")
        rows = [self.convert_tokens_to_ids(self.tokenize(t)) for t in ([text] if single else text)]
        masks = [[1] * len(r) for r in rows]
        if padding in (True, "longest") and rows:
            width, pad = max(map(len, rows)), self.token_to_id(self.special_tokens["pad_token"])
            masks = [m + [0] * (width - len(m)) for m in masks]
            rows = [r + [pad] * (width - len(r)) for r in rows]
        out = {"input_ids": rows[0] if single else rows}
        if return_attention_mask:
            out["attention_mask"] = masks[0] if single else masks
        if return_tensors is not None:
            out = {k: stack_or_list([np.asarray(r, dtype=np.int64) for r in ([v] if single else v)], k, return_tensors)
                   for k, v in out.items()}
        return BatchFeature(out).convert_to_tensors(return_tensors)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        group_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
        output_char_offsets: bool = False,
        output_word_offsets: bool = False,
    ) -> str | CTCTokenizerOutput:
        """Text of one sequence of frame ids (list, numpy array, torch or TF tensor).

        Args:
            token_ids: one id per frame, e.g. ``logits.argmax(-1)[i]``.
            skip_special_tokens: drop special ids (including the blank) before merging runs.
            clean_up_tokenization_spaces: remove spaces before punctuation (None: the tokenizer's setting).
            group_tokens: merge runs of the same id (CTC); False keeps every frame's token.
            spaces_between_special_tokens: join the tokens with spaces instead of nothing.
            output_char_offsets, output_word_offsets: also return the frames each character
                (after merging, blanks left out) or word spans.

        Returns:
            The text, or a ``CTCTokenizerOutput`` when offsets are asked for.
        """
        tokens = self.convert_ids_to_tokens(self._ids(token_ids), skip_special_tokens=skip_special_tokens)
        if group_tokens:
            runs = [(token, len(list(group))) for token, group in itertools.groupby(tokens)]
        else:
            runs = [(token, 1) for token in tokens]
        pad, delimiter = self.special_tokens["pad_token"], self.word_delimiter_token
        kept = [(token, start, start + n) for (token, n), start in zip(runs, _starts(runs)) if token != pad]
        chars = [self.replace_word_delimiter_char if token == delimiter else token for token, _, _ in kept]
        text = (" " if spaces_between_special_tokens else "").join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        if not (output_char_offsets or output_word_offsets):
            return text
        char_offsets = [{"char": c, "start_offset": s, "end_offset": e} for c, (_, s, e) in zip(chars, kept)]
        return CTCTokenizerOutput(
            text=text,
            char_offsets=char_offsets if output_char_offsets else None,
            word_offsets=_word_offsets(char_offsets, self.replace_word_delimiter_char) if output_word_offsets else None,
        )

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str] | CTCTokenizerOutput:
        """``decode`` for each sequence of a batch (list of lists, 2-D array or tensor); with
        offsets, one ``CTCTokenizerOutput`` whose fields are lists over the batch."""
        if not isinstance(sequences, (list, tuple)):
            sequences = as_numpy(sequences)
            if sequences.ndim != 2:
                raise ValueError(f"batch_decode takes a batch of sequences (2-D), got shape {sequences.shape}")
        decoded = [self.decode(seq, **kwargs) for seq in sequences]
        if kwargs.get("output_char_offsets") or kwargs.get("output_word_offsets"):
            return CTCTokenizerOutput(**{k: [d[k] for d in decoded] for k in decoded[0].keys()})
        return decoded

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab={len(self)}, pad/blank={self.special_tokens['pad_token']!r}, "
                f"word_delimiter={self.word_delimiter_token!r})")


def _starts(runs: list[tuple[str, int]]) -> list[int]:
    """First frame of each run."""
    return [0, *itertools.accumulate(n for _, n in runs)][: len(runs)]


def _word_offsets(char_offsets: list[dict], space: str) -> list[dict]:
    """Words (maximal runs of non-space characters) with their first and last frames."""
    words = []
    for is_space, group in itertools.groupby(char_offsets, key=lambda c: c["char"] == space):
        if not is_space:
            group = list(group)
            words.append({"word": "".join(c["char"] for c in group), "start_offset": group[0]["start_offset"],
                          "end_offset": group[-1]["end_offset"]})
    return words


__all__ = ["CTCTokenizer", "CTCTokenizerOutput"]
