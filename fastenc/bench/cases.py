"""What is measured: model configurations, batch shapes and their inputs, and the per-op cases.

Models are built from transformers configs with random weights (nothing is ever downloaded): the published base and
large sizes, plus a tiny BERT for the CPU demo and the tests. Latency does not depend on the weights' values.
A shape is "BxS" (every sequence full) or "var" (the issue's variable-length batch: 32 sequences, lengths drawn
uniformly in 16..512 with a fixed seed, padded to the longest). Inputs are made on the CPU with a seeded generator,
so every variant and every run sees the same batch.

Op cases take the token counts of the model shapes at BERT-base width, so op figures line up with model figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
INFER_SHAPES = ("1x16", "8x128", "32x128", "32x512", "128x128", "var")
TRAIN_SHAPES = ("32x128", "16x512")
VAR_BATCH, VAR_MIN, VAR_MAX, VAR_SEED = 32, 16, 512, 0
OPS = ("embeddings", "add_layer_norm", "bias_gelu", "gelu_layer_norm", "gated_act", "attention", "attention_packed",
       "rotary")
ROTARY_THETA = 160000.0  # ModernBERT's global layers


def public_op(op: str) -> str:
    """The fastenc.ops function a case calls: attention_packed is attention on the packed layout."""
    return op.removesuffix("_packed")
OP_SHAPES = ("8x128", "32x128", "32x512", "var")
BASE_DIMS = {"hidden": 768, "heads": 12, "inter": 3072, "vocab": 30522}
TINY_DIMS = {"hidden": 64, "heads": 4, "inter": 128, "vocab": 1000}


def _bert(**kw: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(**kw)


def _roberta(**kw: Any) -> Any:
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, **kw)


def _albert(**kw: Any) -> Any:
    from transformers import AlbertConfig

    return AlbertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, embedding_size=128, **kw)


def _electra(**kw: Any) -> Any:
    from transformers import ElectraConfig

    return ElectraConfig(hidden_size=768, embedding_size=768, num_attention_heads=12, intermediate_size=3072, **kw)


def _gte(**kw: Any) -> Any:  # gte-multilingual-base's shape (transformers >= 5.25)
    from transformers import GteConfig

    return GteConfig(vocab_size=250048, max_position_embeddings=8192, type_vocab_size=1, **kw)


def _nomic_bert(**kw: Any) -> Any:  # nomic-embed-text-v1.5's shape
    from transformers import NomicBertConfig

    return NomicBertConfig(**kw)
def _modernbert(**kw: Any) -> Any:
    from transformers import ModernBertConfig

    return ModernBertConfig(**kw)  # ModernBERT-base: 22 layers, local window 128 on two layers of three


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000,
            max_position_embeddings=128)
MODELS: dict[str, Callable[[], Any]] = {
    "bert-base": _bert,
    "roberta-base": _roberta,
    "albert-base": _albert,
    "electra-base": _electra,
    "bert-large": lambda: _bert(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "bert-tiny": lambda: _bert(**TINY),
    "gte-base": _gte,
    "nomic-embed": _nomic_bert,
    "modernbert-base": _modernbert,
}
GPU_MODELS = ("bert-base", "roberta-base", "albert-base", "electra-base", "bert-large")


def model_config(name: str) -> Any:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]()


def has_pooler(config: Any, mlm_head: bool) -> bool:
    """transformers' base models carry a [CLS] pooler except ELECTRA, ModernBERT, GTE and NomicBERT; its MLM models
    never do."""
    return not mlm_head and config.model_type not in ("electra", "modernbert", "gte", "nomic_bert")


@dataclass(frozen=True)
class Shape:
    """A batch: its name, padded [batch, seq] and each sequence's real length."""

    name: str
    batch: int
    seq: int
    lengths: tuple[int, ...] = field(repr=False)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded(self) -> bool:
        return any(n < self.seq for n in self.lengths)


def parse_shape(name: str, var_batch: int = VAR_BATCH, var_range: tuple[int, int] = (VAR_MIN, VAR_MAX)) -> Shape:
    """"BxS" -> a full batch; "var" -> `var_batch` lengths uniform in var_range (inclusive, seeded)."""
    if name == "var":
        lo, hi = var_range
        g = torch.Generator().manual_seed(VAR_SEED)
        lens = tuple(int(n) for n in torch.randint(lo, hi + 1, (var_batch,), generator=g))
        return Shape("var", var_batch, max(lens), lens)
    parts = name.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape must be 'BxS' with positive integers (e.g. 32x128) or 'var', got {name!r}")
    b, s = int(parts[0]), int(parts[1])
    return Shape(name.lower(), b, s, (s,) * b)


def model_inputs(config: Any, shape: Shape, device: torch.device, mlm_labels: bool = False) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (and MLM labels on 15% of the real tokens) for `shape`, seeded, on `device`."""
    if shape.seq > config.max_position_embeddings - (2 if config.model_type == "roberta" else 0):
        raise ValueError(f"shape {shape.name}: sequence {shape.seq} exceeds the model's "
                         f"max_position_embeddings {config.max_position_embeddings}")
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(5, config.vocab_size, (shape.batch, shape.seq), generator=g)
    mask = (torch.arange(shape.seq)[None, :] < torch.tensor(shape.lengths)[:, None]).long()
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = ids.masked_fill(mask == 0, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if mlm_labels:
        chosen = (torch.rand(ids.shape, generator=g) < 0.15) & (mask == 1)
        chosen[:, 0] |= True  # at least one label per sequence
        out["labels"] = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {k: v.to(device) for k, v in out.items()}


@dataclass
class OpCase:
    """One op call: `make(dtype, device, grad)` builds a fresh copy of the inputs as (args, kwargs).

    elems, extra_bytes: ideal memory traffic of the forward pass (each input read once, the output written once):
    `elems` elements of the activation dtype plus `extra_bytes` of integer ids; flops: matmul FLOPs of the forward
    pass (attention only).
    """

    op: str
    shape: Shape
    make: Callable[[torch.dtype, torch.device, bool], tuple[tuple, dict]]
    elems: int
    extra_bytes: int = 0
    flops: int = 0

    def bytes(self, dtype: torch.dtype) -> int:
        return self.elems * torch.empty((), dtype=dtype).element_size() + self.extra_bytes


def _param(n: int, dtype: torch.dtype, device: torch.device, grad: bool, g: torch.Generator, scale: float = 1.0,
           shift: float = 0.0) -> torch.Tensor:
    t = (torch.randn(n, generator=g) * scale + shift).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def op_case(op: str, shape: Shape, hidden: int = 768, heads: int = 12, inter: int = 3072, vocab: int = 30522
            ) -> OpCase:
    """The op's call at the given width (BERT-base by default) over the tokens of `shape`, padded layout (attention
    with its key mask when the shape has padding), or for attention_packed the real tokens with cu_seqlens."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    n = shape.batch * shape.seq
    lengths = torch.tensor(shape.lengths)

    def make(dtype: torch.dtype, device: torch.device, grad: bool) -> tuple[tuple, dict]:
        g = torch.Generator().manual_seed(7)

        def act(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)

        w, b = _param(hidden, dtype, device, grad, g, 0.1, 1.0), _param(hidden, dtype, device, grad, g, 0.1)
        if op == "embeddings":
            ids = torch.randint(0, vocab, (shape.batch, shape.seq), generator=g).to(device)
            pos = torch.arange(shape.seq, device=device).expand(shape.batch, -1)
            tt = torch.zeros_like(ids)
            tables = [(act(rows, hidden) * 0.02).detach().requires_grad_(grad) for rows in (vocab, 512, 2)]
            return (ids, tables[0], pos, tables[1], tt, tables[2], w, b), {}
        if op == "add_layer_norm":
            x_bias = _param(hidden, dtype, device, grad, g, 0.1)
            return (act(shape.batch, shape.seq, hidden), act(shape.batch, shape.seq, hidden), w, b), {"x_bias": x_bias}
        if op == "bias_gelu":
            return (act(shape.batch, shape.seq, inter), _param(inter, dtype, device, grad, g, 0.1)), {}
        if op == "gelu_layer_norm":
            return (act(shape.batch, shape.seq, hidden), w, b), {"x_bias": _param(hidden, dtype, device, grad, g, 0.1)}
        if op == "rotary":  # q and k as views of one fused QKV projection output [B, S, 3, H, D], as models call it
            qkv = torch.randn(shape.batch, shape.seq, 3, heads, hidden // heads, generator=g).to(device, dtype)
            q, k = (qkv[:, :, i].detach().requires_grad_(grad) for i in range(2))
            positions = torch.arange(shape.seq, device=device).expand(shape.batch, -1).contiguous()
            return (q, k, positions, ROTARY_THETA), {}
        if op == "gated_act":  # ModernBERT's form: one [.., 2 inter] output split into input and gate
            return (act(shape.batch, shape.seq, 2 * inter),), {"activation": "gelu"}
        if op == "attention_packed":
            q, k, v = (act(shape.tokens, heads, hidden // heads) for _ in range(3))
            cu = torch.zeros(shape.batch + 1, dtype=torch.int32)
            cu[1:] = lengths.cumsum(0)
            return (q, k, v), {"cu_seqlens": cu.to(device), "max_seqlen": shape.seq}
        q, k, v = (act(shape.batch, shape.seq, heads, hidden // heads) for _ in range(3))
        mask = (torch.arange(shape.seq)[None, :] < lengths[:, None]).to(device) if shape.padded else None
        return (q, k, v), {"key_padding_mask": mask}

    if op == "embeddings":  # three table rows read and one row written per token, three int64 ids read
        return OpCase(op, shape, make, 4 * n * hidden, 3 * 8 * n)
    if op.startswith("attention"):  # q, k, v read, o written
        from fastenc.bench.flops import attention_flops

        elems = 4 * (shape.tokens if op == "attention_packed" else n) * hidden
        return OpCase(op, shape, make, elems, flops=attention_flops(shape.lengths, heads, hidden // heads))
    if op == "rotary":  # q and k read and written, one int64 position read per token
        return OpCase(op, shape, make, 4 * n * hidden, 8 * n)
    rows = {"add_layer_norm": 3 * hidden, "bias_gelu": 2 * inter, "gelu_layer_norm": 2 * hidden,
            "gated_act": 3 * inter}[op]
    return OpCase(op, shape, make, n * rows)
