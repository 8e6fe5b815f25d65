"""Model configurations: the fields of a transformers config.json with transformers' defaults, no transformers import.

Trade-off: a config is a plain attribute bag rather than a typed dataclass, so every field of a checkpoint's
config.json (known or not) survives a load / save round trip unchanged and a transformers config object converts
with `to_dict()`; only the fields the models read get defaults and checks here.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch

# Fields every variant shares (transformers' PreTrainedConfig defaults that the models read).
_COMMON: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "bos_token_id": None,
    "eos_token_id": None,
    "classifier_dropout": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "problem_type": None,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "chunk_size_feed_forward": 0,
    "fastenc_unpad": None,  # None: auto (see fastenc.models.layers.choose_packing)
    "fastenc_sparse_mlm": False,  # MLM heads: prediction head on labelled positions only (see layers.mlm_rows)
}

# Fields that describe the run, not the model: never written to config.json.
_RUNTIME_ONLY = ("output_hidden_states", "output_attentions", "return_dict", "fastenc_unpad", "fastenc_sparse_mlm")

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class EncoderConfig:
    """Base of the four configs. `Config(**config_json_fields)`; `Config.from_any(hf_or_fastenc_config)`."""

    model_type: str = ""
    defaults: dict[str, Any] = {}

    def __init__(self, **kwargs: Any) -> None:
        fields = {**_COMMON, **self.defaults}
        num_labels = kwargs.pop("num_labels", None)
        for key in ("transformers_version", "model_type", "_attn_implementation_autoset"):
            kwargs.pop(key, None)
        if "torch_dtype" in kwargs and "dtype" not in kwargs:
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        fields.update(kwargs)
        self.__dict__.update(fields)
        id2label = fields.get("id2label")
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
        if num_labels is not None and (id2label is None or len(self.id2label) != num_labels):
            self.num_labels = num_labels
        elif id2label is None:
            self.num_labels = 2
        self._check()

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_labels must be a positive int, got {n!r}")
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    def _check(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"config.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"config.num_attention_heads ({self.num_attention_heads})")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"config.problem_type must be one of {PROBLEM_TYPES} or None, got {self.problem_type!r}")
        if self.is_decoder or self.add_cross_attention:
            raise ValueError("fastenc runs encoders only: config.is_decoder and config.add_cross_attention must be "
                             "False")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_any(cls, config: Any) -> EncoderConfig:
        """A fastenc config from a fastenc config (returned as is), a transformers config or a dict of fields."""
        if isinstance(config, cls):
            return config
        if isinstance(config, EncoderConfig):
            raise TypeError(f"config is a {type(config).__name__}, expected {cls.__name__}")
        if isinstance(config, dict):
            return cls(**config)
        to_dict = getattr(config, "to_dict", None)
        if to_dict is None:
            raise TypeError(f"config must be a {cls.__name__}, a transformers config or a dict, "
                            f"got {type(config).__name__}")
        fields = to_dict()
        model_type = fields.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config has model_type {model_type!r}, expected {cls.model_type!r}")
        fields.pop("_attn_implementation", None)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The config.json fields (model_type included, run-time switches left out)."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in _RUNTIME_ONLY}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        dtype = out.get("dtype")
        if isinstance(dtype, torch.dtype):
            out["dtype"] = str(dtype).removeprefix("torch.")
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> EncoderConfig:
        """Read `path`/config.json (or the json file `path`); keyword arguments override its fields."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else str(path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no config.json at {path!r}")
        with open(file) as f:
            fields = json.load(f)
        model_type = fields.get("model_type", cls.model_type)
        if cls.model_type and model_type != cls.model_type:
            raise ValueError(f"{file} has model_type {model_type!r}, expected {cls.model_type!r}")
        fields.update(overrides)
        return cls(**fields)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)}"


class BertConfig(EncoderConfig):
    model_type = "bert"
    defaults = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072}


class RobertaConfig(EncoderConfig):
    model_type = "roberta"
    defaults = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


class AlbertConfig(EncoderConfig):
    model_type = "albert"
    defaults = {"vocab_size": 30000, "embedding_size": 128, "hidden_size": 4096, "num_hidden_layers": 12,
                "num_hidden_groups": 1, "num_attention_heads": 64, "intermediate_size": 16384, "inner_group_num": 1,
                "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "classifier_dropout_prob": 0.1, "bos_token_id": 2, "eos_token_id": 3}

    def _check(self) -> None:
        super()._check()
        for name in ("embedding_size", "num_hidden_groups", "inner_group_num"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name} must be a positive int, got {value!r}")


class ElectraConfig(EncoderConfig):
    model_type = "electra"
    defaults = {"vocab_size": 30522, "embedding_size": 128, "hidden_size": 256, "num_hidden_layers": 12,
                "num_attention_heads": 4, "intermediate_size": 1024, "summary_type": "first",
                "summary_use_proj": True, "summary_activation": "gelu", "summary_last_dropout": 0.1}


CONFIGS: dict[str, type[EncoderConfig]] = {c.model_type: c for c in (BertConfig, RobertaConfig, AlbertConfig,
                                                                     ElectraConfig)}
