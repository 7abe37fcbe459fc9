"""Text -> ``input_ids`` for the text models: RoBERTa's byte-level BPE, run by the ``tokenizers`` library.

The vocabulary comes from ``tokenizer.json`` or from ``vocab.json`` + ``merges.txt``; the special
tokens and RoBERTa options from ``tokenizer_config.json`` / ``special_tokens_map.json`` when
present. Sequences are ``<s> A </s>`` and ``<s> A </s></s> B </s>``; truncation and padding run
inside ``tokenizers`` (as in HF's fast tokenizer), so the ids are the same as HF's.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from d2v_common.checkpoints.hub import HubFileMissing, pop_hub_options, resolve_pretrained
from d2v_common.processing.base import (
    BatchFeature,
    as_numpy,
    check_return_tensors,
    token_id_sequence,
    clean_up_tokenization,
    optional_import,
    read_json,
    write_json,
)

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
COMPATIBLE_CLASSES = ("RobertaTokenizer", "RobertaTokenizerFast")
# Special-token roles and RoBERTa's tokens for them, in the order HF registers missing ones.
SPECIAL_ROLES = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}
# A model_max_length above this means "no limit" (HF writes 1e30 when it has none).
NO_LIMIT = int(1e20)
TRUNCATIONS = ("longest_first", "only_first", "only_second")


def _token_fields(value: Any, role: str) -> dict:
    """A special token given as a string or as HF's AddedToken dict -> AddedToken keyword arguments."""
    if isinstance(value, str):
        # RoBERTa's mask token swallows the space before it, so "a <mask>" predicts " word".
        return {"content": value, "lstrip": role == "mask_token", "normalized": role != "mask_token"}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        keys = ("content", "single_word", "lstrip", "rstrip", "normalized")
        return {k: value[k] for k in keys if k in value}
    raise ValueError(f"{role} must be a string or a token dict with 'content', got {value!r}")


def _strategies(padding: Any, truncation: Any, max_length: int | None) -> tuple[str | None, str | None]:
    if padding in (False, None, "do_not_pad"):
        pad = None
    elif padding is True or padding == "longest":
        pad = "longest"
    elif padding == "max_length":
        pad = "max_length"
    else:
        raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}")
    if truncation is None and max_length is not None and pad is None:
        truncation = True  # HF: a max_length alone turns truncation on
    if truncation in (False, None, "do_not_truncate"):
        trunc = None
    elif truncation is True:
        trunc = "longest_first"
    elif truncation in TRUNCATIONS:
        trunc = truncation
    else:
        raise ValueError(f"truncation must be True, False or one of {TRUNCATIONS}; got {truncation!r}")
    return pad, trunc


def _read_config(path: str, overrides: dict) -> tuple[dict, dict[str, dict]]:
    """tokenizer_config.json (with overrides, special-token roles removed) and the special tokens' fields."""
    file = os.path.join(path, CONFIG_FILE)
    config = {**(read_json(file) if os.path.isfile(file) else {}), **overrides}
    kind = config.get("tokenizer_class")
    if kind is not None and kind not in COMPATIBLE_CLASSES:
        raise ValueError(f"TextTokenizer reads RoBERTa tokenizers {COMPATIBLE_CLASSES}, not {kind!r}")
    file = os.path.join(path, SPECIAL_MAP_FILE)
    special_map = read_json(file) if os.path.isfile(file) else {}
    specials = {
        role: _token_fields(config.pop(role, special_map.get(role, default)), role)
        for role, default in SPECIAL_ROLES.items()
    }
    return config, specials


def _serialised_backend(tk: Any, path: str, add_prefix_space: bool) -> dict:
    """The tokenizers JSON of ``tokenizer.json``, or of a byte-level BPE built from vocab.json + merges.txt."""
    file = lambda name: os.path.join(path, name)  # noqa: E731
    if os.path.isfile(file(TOKENIZER_FILE)):
        with open(file(TOKENIZER_FILE), encoding="utf-8") as f:
            return json.load(f)
    if not (os.path.isfile(file(VOCAB_FILE)) and os.path.isfile(file(MERGES_FILE))):
        raise FileNotFoundError(f"{path!r} has neither {TOKENIZER_FILE} nor {VOCAB_FILE} + {MERGES_FILE}")
    bpe = tk.models.BPE.from_file(
        file(VOCAB_FILE), file(MERGES_FILE), continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
    built = tk.Tokenizer(bpe)
    built.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    built.decoder = tk.decoders.ByteLevel()
    return json.loads(built.to_str())


def _tokenizer_files(available: set[str]) -> list[str]:
    """What a hub load fetches: tokenizer.json, else vocab.json + merges.txt, and the configs there are."""
    if TOKENIZER_FILE in available:
        vocabulary = [TOKENIZER_FILE]
    elif VOCAB_FILE in available and MERGES_FILE in available:
        vocabulary = [VOCAB_FILE, MERGES_FILE]
    else:
        raise HubFileMissing(f"no {TOKENIZER_FILE}, nor {VOCAB_FILE} + {MERGES_FILE}")
    return [*vocabulary, *(name for name in (CONFIG_FILE, SPECIAL_MAP_FILE) if name in available)]


class TextTokenizer:
    """RoBERTa byte-level BPE tokenizer with HF's call signature and outputs (``RobertaTokenizerFast``)."""

    model_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        backend: Any,
        special_tokens: dict[str, str] | None = None,
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        extra_config: dict | None = None,
    ):
        """Wrap a ready ``tokenizers.Tokenizer`` (use ``from_pretrained`` to build one from files)."""
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        self.backend = backend
        self.special_tokens = {**SPECIAL_ROLES, **(special_tokens or {})}
        limited = model_max_length is not None and model_max_length <= NO_LIMIT
        self.model_max_length = int(model_max_length) if limited else None
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.extra_config = dict(extra_config or {})  # other tokenizer_config.json keys, saved back
        for role, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise ValueError(f"{role} {token!r} is not in the vocabulary")

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "TextTokenizer":
        """Load from a directory with ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``.

        ``overrides`` replace tokenizer_config.json entries (e.g. ``add_prefix_space=True``,
        ``model_max_length=512``). ``path`` may also be a Hugging Face Hub id (``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` as in HF).
        """
        path = resolve_pretrained(path, _tokenizer_files, **pop_hub_options(overrides))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a directory")
        tk = optional_import("tokenizers")
        config, specials = _read_config(path, overrides)
        add_prefix_space = bool(config.pop("add_prefix_space", False))
        trim_offsets = bool(config.pop("trim_offsets", True))
        data = _serialised_backend(tk, path, add_prefix_space)
        # The config's RoBERTa options win over the serialised ones (HF does the same).
        for part in ("pre_tokenizer", "post_processor"):
            component = data.get(part) or {}
            if "add_prefix_space" in component:
                component["add_prefix_space"] = add_prefix_space
            if part == "post_processor" and "trim_offsets" in component:
                component["trim_offsets"] = trim_offsets
        data["truncation"] = data["padding"] = None  # set per call
        backend = tk.Tokenizer.from_str(json.dumps(data))

        # Tokens listed in the config first (by id, with their flags), then special tokens still missing.
        special_contents = {t["content"] for t in specials.values()}
        listed = config.pop("added_tokens_decoder", None) or {}
        for _, fields in sorted(listed.items(), key=lambda item: int(item[0])):
            special = bool(fields.get("special")) or fields.get("content") in special_contents
            token = tk.AddedToken(**_token_fields(fields, "added token"), special=special)
            (backend.add_special_tokens if special else backend.add_tokens)([token])
        present = {t.content for t in backend.get_added_tokens_decoder().values()}
        for fields in specials.values():
            if fields["content"] not in present:
                backend.add_special_tokens([tk.AddedToken(**fields, special=True)])
                present.add(fields["content"])

        if data.get("post_processor") is None:
            # A RoBERTa tokenizer always wraps sequences in <s> ... </s>; files without the rule still get it.
            sep, cls_ = specials["sep_token"]["content"], specials["cls_token"]["content"]
            backend.post_processor = tk.processors.RobertaProcessing(
                sep=(sep, backend.token_to_id(sep)), cls=(cls_, backend.token_to_id(cls_)),
                trim_offsets=trim_offsets, add_prefix_space=add_prefix_space,
            )
        config.pop("tokenizer_class", None)
        return cls(
            backend,
            special_tokens={role: fields["content"] for role, fields in specials.items()},
            model_max_length=config.pop("model_max_length", None),
            padding_side=config.pop("padding_side", "right"),
            truncation_side=config.pop("truncation_side", "right"),
            clean_up_tokenization_spaces=config.pop("clean_up_tokenization_spaces", False),
            extra_config={**config, "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets},
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` (readable by HF's AutoTokenizer too)."""
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        self.backend.no_truncation()
        self.backend.no_padding()
        data = json.loads(self.backend.to_str())
        added = {t["id"]: t for t in data.get("added_tokens", [])}
        config = {
            **self.extra_config,
            **self.special_tokens,
            "tokenizer_class": "RobertaTokenizer",
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "added_tokens_decoder": {
                str(i): {k: v for k, v in t.items() if k != "id"} for i, t in sorted(added.items())
            },
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        paths = [os.path.join(directory, TOKENIZER_FILE), os.path.join(directory, CONFIG_FILE)]
        write_json(paths[0], data)
        write_json(paths[1], config)
        return paths

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the BPE vocabulary without added tokens (HF's meaning)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def __getattr__(self, name: str) -> Any:
        # bos_token, pad_token_id, mask_token_id, ... for the seven special roles.
        specials = self.__dict__.get("special_tokens", {})
        if name in specials:
            return specials[name]
        if name.endswith("_id") and name[:-3] in specials:
            return self.backend.token_to_id(specials[name[:-3]])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.backend.token_to_id(t) for t in self.special_tokens.values()})

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of ``text`` without special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        def one(token: str) -> int:
            i = self.backend.token_to_id(token)
            return self.backend.token_to_id(self.special_tokens["unk_token"]) if i is None else i

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]):
        if np.ndim(ids) == 0:
            return self.backend.id_to_token(int(ids))
        return [self.backend.id_to_token(int(i)) for i in ids]

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _batch(text: Any, text_pair: Any) -> tuple[list, bool]:
        """(inputs for encode_batch, whether the call was batched), checking types and lengths."""

        def check(value: Any, what: str) -> None:
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, got {type(value).__name__}")

        if isinstance(text, str):
            if text_pair is None:
                return [text], False
            check(text_pair, "text_pair (for a single text)")
            return [(text, text_pair)], False
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        if len(text) == 0:
            raise ValueError("text is an empty batch")
        if text_pair is None:
            out = []
            for i, item in enumerate(text):
                if isinstance(item, (list, tuple)):  # a batch of (first, second) pairs
                    if len(item) != 2:
                        raise ValueError(f"text[{i}] must be a str or a (text, text_pair) pair, got {len(item)} items")
                    check(item[0], f"text[{i}][0]")
                    check(item[1], f"text[{i}][1]")
                    out.append(tuple(item))
                else:
                    check(item, f"text[{i}]")
                    out.append(item)
            return out, True
        if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text):
            raise ValueError("text_pair must be a list as long as text when text is a batch")
        for i, (a, b) in enumerate(zip(text, text_pair)):
            check(a, f"text[{i}]")
            check(b, f"text_pair[{i}]")
        return list(zip(text, text_pair)), True

    def __call__(
        self,
        text: str | list[str] | list[tuple[str, str]],
        text_pair: str | list[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
    ) -> BatchFeature:
        """Tokenise one text (or pair) or a batch; arguments as HF's tokenizers.

        Without return_tensors the fields are lists (nested for a batch); with "np", "pt" or
        "tf" they are int64 arrays/tensors of shape (batch, length), which needs equal lengths
        (padding) for batches.
        """
        check_return_tensors(return_tensors)
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        pad, trunc = _strategies(padding, truncation, max_length)
        if max_length is None and (pad == "max_length" or trunc is not None):
            if self.model_max_length is None:
                raise ValueError(
                    "padding='max_length' and truncation need max_length: this tokenizer has no model_max_length"
                )
            max_length = self.model_max_length
        if trunc and pad and pad_to_multiple_of and max_length % pad_to_multiple_of:
            raise ValueError(f"max_length {max_length} for truncation is not a multiple of pad_to_multiple_of")
        inputs, batched = self._batch(text, text_pair)

        backend = self.backend
        backend.no_truncation()
        backend.no_padding()
        if trunc:
            backend.enable_truncation(max_length, stride=0, strategy=trunc, direction=self.truncation_side)
        if pad:
            backend.enable_padding(
                direction=side, pad_id=self.pad_token_id, pad_type_id=0, pad_token=self.pad_token,
                length=max_length if pad == "max_length" else None, pad_to_multiple_of=pad_to_multiple_of,
            )
        try:
            encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as err:  # tokenizers raises plain Exceptions (e.g. max_length too short for pairs)
            raise ValueError(f"cannot encode the text: {err}") from None

        fields = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            fields["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is None or return_attention_mask:
            fields["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            fields["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            fields["offset_mapping"] = [e.offsets for e in encodings]
        if return_length:
            fields["length"] = [len(e.ids) for e in encodings]
        limit = self.model_max_length
        if limit is not None and not trunc and any(len(ids) > limit for ids in fields["input_ids"]):
            warnings.warn(
                f"a sequence is longer than model_max_length={limit}: the model will reject it; "
                "pass truncation=True", stacklevel=2,
            )

        if return_tensors is None:
            if not batched:
                fields = {k: v if k == "length" else v[0] for k, v in fields.items()}
            return BatchFeature(fields)
        lengths = {len(ids) for ids in fields["input_ids"]}
        if len(lengths) > 1:
            raise ValueError(
                f"cannot make tensors from sequences of different lengths {sorted(lengths)}: pass padding=True"
            )
        return BatchFeature({k: np.asarray(v, dtype=np.int64) for k, v in fields.items()}).convert_to_tensors(
            return_tensors
        )

    # ------------------------------------------------------------------ decoding
    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """Text of one sequence of ids (list, numpy array, torch or TF tensor)."""
        ids = token_id_sequence(token_ids)
        bad = ids[(ids < 0) | (ids >= len(self))]
        if bad.size:
            raise ValueError(f"token ids {sorted(set(bad.tolist()))[:5]} are outside the vocabulary [0, {len(self)})")
        text = self.backend.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """``decode`` for each sequence of a batch (list of lists, 2-D array or tensor)."""
        if not isinstance(sequences, (list, tuple)):
            sequences = as_numpy(sequences)
            if sequences.ndim != 2:
                raise ValueError(f"batch_decode takes a batch of sequences (2-D), got shape {sequences.shape}")
        return [self.decode(seq, **kwargs) for seq in sequences]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab={len(self)}, model_max_length={self.model_max_length})"


__all__ = ["TextTokenizer"]
