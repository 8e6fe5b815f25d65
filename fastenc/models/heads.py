"""What every fastenc model class adds to the transformers class it subclasses.

`class BertModel(FastencModel, transformers.BertModel)`: construction builds transformers' model, then switches its
blocks to fastenc's (`fastenc.models.swaps`) and its attention implementation to "fastenc" (unless "eager" was
asked for: that one's mask is an additive bias, run by the reference attention, which returns the probabilities
transformers' eager attention gives; the blocks are fastenc's either way). Everything else -
loading, saving, resizing, tying, gradient checkpointing, the Hub, PEFT - is transformers' own. The forward keeps
transformers' signature and adds keyword arguments:
  - unpad (None | bool): run the layers on the real tokens only (`fastenc.models.packing`); None (default:
    config.fastenc_unpad, else auto) packs padded batches whose rows start with a real token.
  - sparse_prediction (MLM and BERT / ALBERT pre-training heads; default config.fastenc_sparse_mlm, off): with
    labels, the prediction head runs on the labelled positions only and the MLM logits come back as
    [num_labelled, vocab] in (batch, seq) order; the loss and every gradient are the same.

Losses never change with the layout: when a loss reads padded positions (QA span losses; token labels that are not
-100 at a padded position), the forward stays padded. The labels are checked in the encoder's one host read of the
mask, with no read of their own.

Trade-off: the added keywords cost a Python wrapper per call (a dict lookup per argument) in front of transformers'
forward; in exchange every transformers feature is inherited rather than re-implemented.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fastenc.models.attend import ATTN_IMPLEMENTATION
from fastenc.models.hf_internals import refresh_recordable, requested_attn_implementation
from fastenc.models.packing import tracing, unpad_scope
from fastenc.models.swaps import _Swap, install_blocks
from fastenc.ops.embeddings import ID_DTYPES


def _known_zero(size: int) -> bool:
    """size == 0; a traced size only when it is known to be 0 (guard_or_false), so that the check adds no guard on a
    symbolic batch or sequence length (torch.export's Dims may start at 0)."""
    if not torch.compiler.is_compiling():
        return size == 0
    from torch.fx.experimental.symbolic_shapes import guard_or_false  # loaded by tracing; ~1 s to import otherwise

    return guard_or_false(size == 0)


def check_encoder_config(config: Any, cls_name: str) -> None:
    """fastenc runs encoders: decoder and cross-attention configurations are refused, naming the field."""
    for field in ("is_decoder", "add_cross_attention"):
        if getattr(config, field, False):
            raise ValueError(f"{cls_name}: config.{field}=True is not supported; fastenc runs encoders only "
                             f"(use the transformers class for decoding or cross-attention)")


def sparse_prediction_flag(config: Any, sparse_prediction: bool | None) -> bool:
    """forward(sparse_prediction=...) if given, else config.fastenc_sparse_mlm."""
    if sparse_prediction is None:
        return bool(getattr(config, "fastenc_sparse_mlm", False))
    if not isinstance(sparse_prediction, bool):
        raise TypeError(f"sparse_prediction must be a bool or None, got {type(sparse_prediction).__name__}")
    return sparse_prediction


def mlm_rows(h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled positions (label != -100) of h [B, S, H] as rows [N, H] in (batch, seq) order, and their labels
    [N] (one host sync to count them). Unlabelled positions add nothing to the MLM loss, so skipping the prediction
    head there leaves the loss and every gradient as they were."""
    if labels.numel() != h.shape[0] * h.shape[1]:
        raise ValueError(f"labels must have shape [batch, seq] = {list(h.shape[:2])}, got {list(labels.shape)}")
    labels = labels.reshape(-1).to(h.device)
    index = (labels != -100).nonzero().squeeze(1)
    return h.reshape(-1, h.shape[-1]).index_select(0, index), labels.index_select(0, index)


def adopt(model: Any, cls: type) -> None:
    """Give a live transformers model the class `cls` (its fastenc twin, or back), as transformers would have
    registered it had it been built so (transformers keys its output-capture table by class)."""
    model.__class__ = cls
    refresh_recordable(model)


def pretraining_loss(scores: torch.Tensor, labels: torch.Tensor, pair_logits: torch.Tensor,
                     pair_label: torch.Tensor | None) -> torch.Tensor | None:
    """BERT / ALBERT pre-training loss on the sparse path: MLM over the labelled rows plus the two-way sentence
    objective (NSP / SOP); None without the sentence label, as transformers."""
    if pair_label is None:
        return None
    return F.cross_entropy(scores, labels) + F.cross_entropy(pair_logits.view(-1, 2), pair_label.view(-1))


def _transformers_forward(cls: type) -> Callable:
    """The forward of the first class after FastencModel in cls's MRO that defines one (transformers' class)."""
    mro = cls.__mro__
    for klass in mro[mro.index(FastencModel) + 1:]:
        if "forward" in klass.__dict__:
            return klass.__dict__["forward"]
    raise TypeError(f"{cls.__name__}: no transformers forward to wrap")


class FastencModel:
    """Mixin placed before a transformers encoder class. Class attributes a head sets:
    _fastenc_padded_loss: None, "spans" (start/end positions over the whole sequence) or "labels" (token labels);
    _fastenc_sparse: True for heads with an MLM prediction head, which then define `_fastenc_mlm_logits(rows)` or,
    with a second objective, `_fastenc_sparse_head(outputs, rows, labels, arg)`."""

    _fastenc_padded_loss: str | None = None
    _fastenc_sparse: bool = False
    _fastenc_hf_class: type  # set per subclass

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        check_encoder_config(config, type(self).__name__)
        requested = requested_attn_implementation(config)
        super().__init__(config, *args, **kwargs)
        install_blocks(self)
        if requested != "eager":  # eager is never transformers' default: it was asked for (attention probabilities)
            self.set_attn_implementation(ATTN_IMPLEMENTATION)

    @classmethod
    def is_custom_code(cls) -> bool:
        """transformers' answer for the class it subclasses: the modules, keys and `_init_weights` are transformers'
        own, so checkpoint key conversions apply and weights a checkpoint lacks are initialised as transformers does
        (transformers skips both for classes defined outside its package: GTE's original key layout would not load)."""
        return cls._fastenc_hf_class.is_custom_code()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        # the transformers class it subclasses (after a block swap placed before it, if any: families.classes)
        cls._fastenc_hf_class = next(k for k in mro[mro.index(FastencModel) + 1:] if not issubclass(k, _Swap))
        if "forward" in cls.__dict__:
            return
        parent = _transformers_forward(cls)
        signature = inspect.signature(parent)
        names = [p.name for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
        extra = [inspect.Parameter("unpad", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="bool | None")]
        if cls._fastenc_sparse:
            extra.append(inspect.Parameter("sparse_prediction", inspect.Parameter.KEYWORD_ONLY, default=None,
                                           annotation="bool | None"))
        params = list(signature.parameters.values())
        tail = [p for p in params if p.kind is p.VAR_KEYWORD]
        head = [p for p in params if p.kind is not p.VAR_KEYWORD]

        def forward(self, *args: Any, unpad: bool | None = None, sparse_prediction: bool | None = None,
                    **kwargs: Any) -> Any:
            return self._fastenc_forward(parent, names, args, kwargs, unpad, sparse_prediction)

        forward.__signature__ = signature.replace(parameters=[*head, *extra, *tail])
        forward.__doc__ = parent.__doc__
        forward.__name__ = forward.__qualname__ = "forward"
        cls.forward = forward

    def _fastenc_forward(self, parent: Callable, names: list[str], args: tuple, kwargs: dict,
                         unpad: bool | None, sparse_prediction: bool | None) -> Any:
        def arg(name: str) -> Any:
            if name in kwargs:
                return kwargs[name]
            i = names.index(name) if name in names else len(args)
            return args[i] if i < len(args) else None

        self._fastenc_check_inputs(arg)
        if sparse_prediction is not None and not self._fastenc_sparse:
            raise TypeError(f"{type(self).__name__}.forward got sparse_prediction, which only the MLM heads take")
        if unpad is not None and not isinstance(unpad, bool):
            raise TypeError(f"unpad must be a bool or None, got {type(unpad).__name__}")
        if unpad is None:
            unpad = getattr(self.config, "fastenc_unpad", None)
        labels = None
        if unpad is not False:
            reads = self._fastenc_loss_reads_padding(arg)
            if reads is True:
                unpad = False
            elif reads is not False:
                labels = reads  # the encoder's layout read checks them
        sparse = self._fastenc_sparse and sparse_prediction_flag(self.config, sparse_prediction)
        if torch.compiler.is_compiling():  # traced calls stay padded: no scope needed (dynamo cannot trace one)
            return parent(self, *args, **kwargs)
        with unpad_scope(unpad, labels):
            if sparse and arg("labels") is not None:
                return self._fastenc_sparse_forward(names, args, kwargs, arg)
            return parent(self, *args, **kwargs)

    def _fastenc_check_inputs(self, arg: Callable[[str], Any]) -> None:
        """Metadata-only checks (no device sync) that give bad input an error naming the argument."""
        for name in ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "cache"):
            if arg(name) is not None:
                raise ValueError(f"{name} is not supported: fastenc runs encoders only (no cross-attention or cache)")
        ids, embeds, mask = arg("input_ids"), arg("inputs_embeds"), arg("attention_mask")
        if (ids is None) == (embeds is None):
            raise ValueError("exactly one of input_ids and inputs_embeds must be given")
        dims = 3 if type(self).__name__.endswith("ForMultipleChoice") else 2
        if ids is not None:
            if not isinstance(ids, torch.Tensor):
                raise TypeError(f"input_ids must be a torch.Tensor, got {type(ids).__name__}")
            if ids.dtype not in ID_DTYPES:
                raise TypeError(f"input_ids must hold integer ids (torch.long or torch.int), got dtype {ids.dtype}")
            if ids.dim() != dims:
                raise ValueError(f"input_ids must be {dims}-D, got shape {tuple(ids.shape)}")
            shape = tuple(ids.shape)
        else:
            if not isinstance(embeds, torch.Tensor) or embeds.dim() != dims + 1:
                raise ValueError(f"inputs_embeds must be a {dims + 1}-D tensor")
            shape = tuple(embeds.shape[:-1])
        if any(_known_zero(n) for n in shape):
            raise ValueError(f"{'input_ids' if ids is not None else 'inputs_embeds'} has shape {shape}: an empty batch "
                             f"or zero-length sequences cannot run (nor can they in transformers' attention)")
        if mask is None:
            return
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() == dims:
            if tuple(mask.shape) != shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {shape}, got {tuple(mask.shape)}")
        elif mask.dim() == 4 and dims == 2:
            heads = self.config.num_attention_heads
            try:
                torch.broadcast_shapes(mask.shape, (shape[0], heads, shape[1], shape[1]))
            except RuntimeError:
                raise ValueError(f"a 4-D attention_mask must broadcast to [batch, heads, seq, seq] = "
                                 f"{[shape[0], heads, shape[1], shape[1]]}, got {list(mask.shape)}") from None
        else:
            raise ValueError(f"attention_mask must be {dims}-D [batch, seq] or 4-D, got shape {tuple(mask.shape)}")

    def _fastenc_loss_reads_padding(self, arg: Callable[[str], Any]) -> bool | torch.Tensor:
        """Whether this call's loss reads padded positions (then the forward stays padded): True, False, or the
        token labels when it depends on their values (-100 at every padded position or not), which the encoder
        checks in its one host read (`fastenc.models.packing.choose_packing`)."""
        if self._fastenc_padded_loss == "spans":
            return arg("start_positions") is not None and arg("end_positions") is not None
        if self._fastenc_padded_loss != "labels":
            return False
        labels, mask = arg("labels"), arg("attention_mask")
        if labels is None or mask is None or tracing(labels):
            return False
        if mask.dim() != 2 or labels.shape != mask.shape:
            return True  # cannot tell which labels sit on padding: keep transformers' layout
        return labels

    def _fastenc_sparse_forward(self, names: list[str], args: tuple, kwargs: dict, arg: Callable) -> Any:
        """The MLM head on labelled positions only; the base model runs as in transformers' forward."""
        inputs = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return_dict = rest.pop("return_dict", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.base_model(**{k: arg(k) for k in inputs if arg(k) is not None}, return_dict=True, **rest)
        rows, labels = mlm_rows(outputs.last_hidden_state, arg("labels"))
        result = self._fastenc_sparse_head(outputs, rows, labels, arg)
        return result if return_dict else result.to_tuple()

    def _fastenc_sparse_head(self, outputs: Any, rows: torch.Tensor, labels: torch.Tensor, arg: Callable) -> Any:
        from transformers.modeling_outputs import MaskedLMOutput

        logits = self._fastenc_mlm_logits(rows)
        return MaskedLMOutput(loss=F.cross_entropy(logits, labels), logits=logits,
                              hidden_states=outputs.hidden_states, attentions=outputs.attentions)
