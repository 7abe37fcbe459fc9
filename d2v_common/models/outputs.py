"""Model outputs shared by both frameworks: fields by attribute, by key, or by position.

As in HF, fields that are ``None`` are left out of ``keys()`` and of ``to_tuple()``, so
``out[0]`` is the first field that was actually produced.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ModelOutput(OrderedDict):
    fields: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        if len(args) > len(self.fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.fields)} positional fields")
        values = dict(zip(self.fields, args))
        for key, value in kwargs.items():
            if key not in self.fields:
                raise TypeError(f"{type(self).__name__} has no field {key!r}; fields: {', '.join(self.fields)}")
            if key in values:
                raise TypeError(f"{type(self).__name__}: field {key!r} given twice")
            values[key] = value
        for key in self.fields:
            self.__setattr__(key, values.get(key))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.fields:
            if value is None:
                super().pop(name, None)
            else:
                super().__setitem__(name, value)
                # keep field order whatever order fields are set in (loss is often set last)
                for later in self.fields[self.fields.index(name) + 1 :]:
                    if later in self:
                        self.move_to_end(later)
        object.__setattr__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.fields:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        self.__setattr__(key, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __reduce__(self):
        return type(self), tuple(getattr(self, f) for f in self.fields)

    def to_tuple(self) -> tuple:
        return tuple(OrderedDict.__getitem__(self, k) for k in self.keys())


def _output(name: str, *fields: str) -> type[ModelOutput]:
    return type(name, (ModelOutput,), {"fields": fields, "__doc__": f"Fields: {', '.join(fields)}."})


BaseModelOutput = _output("BaseModelOutput", "last_hidden_state", "hidden_states", "attentions")
BaseModelOutputWithPooling = _output(
    "BaseModelOutputWithPooling", "last_hidden_state", "pooler_output", "hidden_states", "attentions"
)
BaseModelOutputWithPoolingAndCrossAttentions = _output(
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "last_hidden_state", "pooler_output", "hidden_states", "past_key_values", "attentions", "cross_attentions",
)
CausalLMOutputWithCrossAttentions = _output(
    "CausalLMOutputWithCrossAttentions",
    "loss", "logits", "past_key_values", "hidden_states", "attentions", "cross_attentions",
)
MaskedLMOutput = _output("MaskedLMOutput", "loss", "logits", "hidden_states", "attentions")
SequenceClassifierOutput = _output("SequenceClassifierOutput", "loss", "logits", "hidden_states", "attentions")
MultipleChoiceModelOutput = _output("MultipleChoiceModelOutput", "loss", "logits", "hidden_states", "attentions")
TokenClassifierOutput = _output("TokenClassifierOutput", "loss", "logits", "hidden_states", "attentions")
QuestionAnsweringModelOutput = _output(
    "QuestionAnsweringModelOutput", "loss", "start_logits", "end_logits", "hidden_states", "attentions"
)
Wav2Vec2BaseModelOutput = _output(
    "Wav2Vec2BaseModelOutput", "last_hidden_state", "extract_features", "hidden_states", "attentions"
)
CausalLMOutput = _output("CausalLMOutput", "loss", "logits", "hidden_states", "attentions")
XVectorOutput = _output("XVectorOutput", "loss", "logits", "embeddings", "hidden_states", "attentions")
ImageClassifierOutput = _output("ImageClassifierOutput", "loss", "logits", "hidden_states", "attentions")
SemanticSegmenterOutput = _output("SemanticSegmenterOutput", "loss", "logits", "hidden_states", "attentions")
Data2VecVisionModelOutputWithPooling = _output(
    "Data2VecVisionModelOutputWithPooling", "last_hidden_state", "pooler_output", "hidden_states", "attentions"
)


def finish(output: ModelOutput, return_dict: bool):
    """The output object, or HF's tuple form (None fields dropped) when ``return_dict`` is False."""
    return output if return_dict else output.to_tuple()


class EncoderRecord:
    """What an encoder collects besides its last state, as the call's flags ask: the input of
    every layer (+ the final state), attention maps, cross-attention maps, cache entries and
    feed-forward outputs. Framework-neutral: it only appends to lists.

    Args:
        hidden_states: keep each layer's input and the final state.
        attentions: keep attention maps (and cross-attention maps that are not None).
        ffn_states: keep each layer's feed-forward output (data2vec pretraining targets).
        cache: keep each layer's key/value cache entry.
    """

    def __init__(self, hidden_states: bool = False, attentions: bool = False, ffn_states: bool = False,
                 cache: bool = False):
        self._hidden = [] if hidden_states else None
        self._attentions = [] if attentions else None
        self._cross = []
        self._ffn = [] if ffn_states else None
        self._presents = [] if cache else None

    def layer_input(self, x) -> None:
        """Call before each layer with its input."""
        if self._hidden is not None:
            self._hidden.append(x)

    def layer_output(self, attention=None, cross_attention=None, ffn=None, present=None) -> None:
        """Call after each layer with what it returned (None for a layer that was skipped)."""
        if self._attentions is not None:
            self._attentions.append(attention)
            if cross_attention is not None:
                self._cross.append(cross_attention)
        if self._ffn is not None:
            self._ffn.append(ffn)
        if self._presents is not None:
            self._presents.append(present)

    def finish(self, x) -> "EncoderRecord":
        """Call once with the final state; the properties below are then complete."""
        if self._hidden is not None:
            self._hidden.append(x)
        return self

    @staticmethod
    def _tuple(values):
        return None if values is None else tuple(values)

    @property
    def hidden_states(self):
        return self._tuple(self._hidden)

    @property
    def attentions(self):
        return self._tuple(self._attentions)

    @property
    def cross_attentions(self):
        return tuple(self._cross) if self._cross else None

    @property
    def ffn_states(self):
        return self._tuple(self._ffn)

    @property
    def presents(self):
        return self._tuple(self._presents)
