"""What every fastenc model shares: output containers, weight init, weight tying, checkpoint loading and saving.

Checkpoints are transformers' own format (config.json + model.safetensors, sharded safetensors with their index, or
pytorch_model.bin), read and written without importing transformers. Trade-off: the model is built (and
initialised) on its device first and the checkpoint copied in, rather than materialised from the checkpoint
directly; this costs one random init at load time and keeps freshly added heads initialised as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fastenc.configuration import EncoderConfig

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
_LEGACY_SUFFIX = {"gamma": "weight", "beta": "bias"}
_BUFFER_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


class ModelOutput:
    """Base of the output dataclasses: attribute, key and index access; `to_tuple()` drops None fields, so
    `out[0]` and `return_dict=False` give transformers' order."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default


def _output(name: str, *fields: str) -> type:
    return dataclasses.make_dataclass(name, [(f, Any, None) for f in fields], bases=(ModelOutput,))


BaseModelOutput = _output("BaseModelOutput", "last_hidden_state", "hidden_states", "attentions")
BaseModelOutputWithPooling = _output("BaseModelOutputWithPooling", "last_hidden_state", "pooler_output",
                                     "hidden_states", "attentions")
SequenceClassifierOutput = _output("SequenceClassifierOutput", "loss", "logits", "hidden_states", "attentions")
TokenClassifierOutput = _output("TokenClassifierOutput", "loss", "logits", "hidden_states", "attentions")
MaskedLMOutput = _output("MaskedLMOutput", "loss", "logits", "hidden_states", "attentions")
QuestionAnsweringModelOutput = _output("QuestionAnsweringModelOutput", "loss", "start_logits", "end_logits",
                                       "hidden_states", "attentions")
BertForPreTrainingOutput = _output("BertForPreTrainingOutput", "loss", "prediction_logits", "seq_relationship_logits",
                                   "hidden_states", "attentions")
AlbertForPreTrainingOutput = _output("AlbertForPreTrainingOutput", "loss", "prediction_logits", "sop_logits",
                                     "hidden_states", "attentions")
ElectraForPreTrainingOutput = _output("ElectraForPreTrainingOutput", "loss", "logits", "hidden_states", "attentions")


def _resolve_dtype(dtype: Any, config: EncoderConfig) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype == "auto":
        dtype = getattr(config, "dtype", None)
        if dtype is None:
            return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"torch_dtype must be a floating torch.dtype, its name or 'auto', got {dtype!r}")
    return dtype


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a transformers checkpoint folder, on CPU: model.safetensors, sharded safetensors or
    pytorch_model.bin (loaded with weights_only=True)."""
    from safetensors.torch import load_file

    single, index, legacy = (os.path.join(path, n) for n in (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS))
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
        return state
    if os.path.isfile(legacy):
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS} in {path!r}")


def _legacy_name(key: str) -> str:
    owner, _, leaf = key.rpartition(".")
    return f"{owner}.{_LEGACY_SUFFIX[leaf]}" if leaf in _LEGACY_SUFFIX and "LayerNorm" in owner else key


class PreTrainedEncoder(nn.Module):
    """Base of every fastenc model. Subclasses set `config_class`, `base_model_prefix` and, for tied decoders,
    `_tied_weights_keys` = {tied parameter: its source}, as transformers does."""

    config_class: type[EncoderConfig] = EncoderConfig
    base_model_prefix: str = ""
    _tied_weights_keys: dict[str, str] = {}
    supports_gradient_checkpointing = True

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = self.config_class.from_any(config)

    # -- initialisation and tying ---------------------------------------------------------------------------------

    def post_init(self) -> None:
        """Initialise every weight as transformers does, then tie the decoder to the input embeddings."""
        self.apply(self._init_weights)
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" and not isinstance(module, (nn.Linear, nn.LayerNorm)):
                param.zero_()  # the MLM heads' output bias

    def tie_weights(self) -> None:
        """Make each tied parameter the very Parameter of its source (decoder weight = word embeddings unless
        config.tie_word_embeddings is False; decoder bias = the head's bias)."""
        for target, source in self._tied_weights_keys.items():
            if source.endswith("word_embeddings.weight") and not self.config.tie_word_embeddings:
                continue
            owner, _, name = target.rpartition(".")
            setattr(self.get_submodule(owner), name, self.get_parameter(source))

    def _tied_targets(self) -> set[str]:
        return {t for t, s in self._tied_weights_keys.items()
                if self.get_parameter(t) is self.get_parameter(s)}

    def get_input_embeddings(self) -> nn.Embedding:
        base = getattr(self, self.base_model_prefix, self)
        return base.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear | None:
        """The MLM decoder (the Linear whose weight is tied to the input embeddings), None without an MLM head."""
        for target in self._tied_weights_keys:
            if target.endswith(".weight"):
                return self.get_submodule(target.rpartition(".")[0])
        return None

    # -- gradient checkpointing (transformers' method names, so Trainer's switch works) ----------------------------

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- loading ------------------------------------------------------------------------------------------------

    def _adapt_prefix(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Match a base checkpoint to a head model (add the prefix) or a head checkpoint to a base model (drop it).
        Old checkpoints' LayerNorm.gamma / .beta become .weight / .bias, and the position_ids / token_type_ids
        buffers they stored (persistent in old transformers versions) are dropped, as transformers does."""
        state = {_legacy_name(k): v for k, v in state.items() if not k.endswith(_BUFFER_KEYS)}
        prefix = self.base_model_prefix + "."
        own = set(self.state_dict())
        is_head = any(k.startswith(prefix) for k in own)
        has_prefix = any(k.startswith(prefix) for k in state)
        if is_head and not has_prefix:
            return {prefix + k: v for k, v in state.items()}
        if not is_head and has_prefix:
            return {k.removeprefix(prefix): v for k, v in state.items()}
        return state

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, list]:
        """Copy a (possibly base-only or head) state dict in; returns transformers' loading-info dict."""
        state = self._adapt_prefix(state)
        own = self.state_dict()
        tied = self._tied_targets()
        mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                      if k in own and v.shape != own[k].shape]
        bad = {k for k, _, _ in mismatched}
        usable = {k: v for k, v in state.items() if k in own and k not in bad}
        missing = sorted(k for k in own if k not in usable and not (k in tied and k not in state))
        unexpected = sorted(k for k in state if k not in own)
        with torch.no_grad():
            for k, v in usable.items():
                own[k].copy_(v)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched,
                "error_msgs": []}

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: Any = None,
        torch_dtype: Any = None,
        dtype: Any = None,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ) -> PreTrainedEncoder | tuple[PreTrainedEncoder, dict[str, list]]:
        """Load a local transformers checkpoint folder. Head weights absent from the checkpoint are initialised
        and reported (a warning; `output_loading_info=True` also returns them). Extra keyword arguments override
        config fields (e.g. num_labels=3)."""
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a local checkpoint folder (fastenc does not download)")
        if config is None:
            config = cls.config_class.from_pretrained(path, **config_overrides)
        else:
            config = cls.config_class.from_any(config)
        target = _resolve_dtype(dtype if dtype is not None else torch_dtype, config)
        model = cls(config)
        if target is not None:
            model.to(target)
        info = model.load_checkpoint_state(load_checkpoint(path))
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            warnings.warn(
                f"{cls.__name__}.from_pretrained({path!r}): newly initialised (missing in the checkpoint): "
                f"{info['missing_keys']}; unused (unexpected): {info['unexpected_keys']}; shape mismatches: "
                f"{info['mismatched_keys']}",
                stacklevel=2,
            )
        model.eval()
        return (model, info) if output_loading_info else model

    # -- saving -------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors (tied copies left out), a folder transformers loads."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        fields = self.config.to_dict()
        fields["architectures"] = [type(self).__name__]
        fields["dtype"] = str(self.dtype).removeprefix("torch.")
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            json.dump(dict(sorted(fields.items())), f, indent=2)
            f.write("\n")
        tied = self._tied_targets()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k not in tied}
        save_file(state, os.path.join(save_directory, SAFE_WEIGHTS), metadata={"format": "pt"})


def from_hf(hf_model: nn.Module) -> PreTrainedEncoder:
    """The fastenc twin of a live transformers model (one of the four variants, base or head): same config, and the
    SAME parameter tensors (shared nn.Parameter objects, so training either trains both); buffers are copied.
    Built on the meta device first, so nothing is initialised twice."""
    import fastenc.models as models

    name = type(hf_model).__name__
    cls = getattr(models, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedEncoder)):
        raise TypeError(f"from_hf: no fastenc class for {name}; supported: {sorted(models.MODEL_CLASSES)}")
    with torch.device("meta"):
        model = cls(hf_model.config)
    hf_params = dict(hf_model.named_parameters(remove_duplicate=False))
    own = dict(model.named_parameters(remove_duplicate=False))
    if set(own) != set(hf_params):
        raise ValueError(f"from_hf: parameter names differ: only in fastenc {sorted(set(own) - set(hf_params))}, "
                         f"only in transformers {sorted(set(hf_params) - set(own))}")
    for key, param in hf_params.items():
        owner, _, attr = key.rpartition(".")
        setattr(model.get_submodule(owner), attr, param)
    hf_buffers = dict(hf_model.named_buffers())
    for key, _ in list(model.named_buffers()):
        owner, _, attr = key.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, hf_buffers[key].clone(), persistent=False)
    model.train(hf_model.training)
    return model
