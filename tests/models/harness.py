"""Shared pieces of the model tests: tiny random transformers models of every variant and head, saved with
transformers' save_pretrained and loaded by fastenc; padded inputs (full, right-padded, left-padded and fully
padded rows); labels per head; comparisons that never let NaN pass."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
import transformers

import fastenc

ROTARY = tuple(v for v in ("gte", "nomic_bert") if importlib.util.find_spec(f"transformers.models.{v}"))  # by release
VARIANTS = ("bert", "roberta", "albert", "electra", "xlm_roberta", "camembert", "distilbert", "modernbert", *ROTARY)

_SHARED = ["Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM",
           "ForMultipleChoice"]
HEADS = {
    "bert": [*_SHARED, "ForPreTraining", "ForNextSentencePrediction"],
    "roberta": _SHARED,
    "albert": [*_SHARED, "ForPreTraining"],
    "electra": [*_SHARED, "ForPreTraining"],
    "xlm_roberta": _SHARED,
    "camembert": _SHARED,
    "distilbert": _SHARED,
    "modernbert": _SHARED,
    **dict.fromkeys(ROTARY, ["Model", "ForSequenceClassification", "ForTokenClassification", "ForMaskedLM"]),
}
CHOICES = 2  # ForMultipleChoice inputs are [batch, CHOICES, seq]
PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra", "xlm_roberta": "XLMRoberta",
          "camembert": "Camembert", "distilbert": "DistilBert", "modernbert": "ModernBert", "gte": "Gte",
          "nomic_bert": "NomicBert"}
ALL_CLASSES = [PREFIX[v] + h for v in VARIANTS for h in HEADS[v]]

COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, num_labels=3, initializer_range=0.2)
VARIANT_FIELDS = {
    "bert": dict(hidden_act="gelu", layer_norm_eps=1e-12),
    "roberta": dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                    eos_token_id=2),
    "albert": dict(hidden_act="gelu_new", layer_norm_eps=1e-12, embedding_size=16, num_hidden_layers=3,
                   num_hidden_groups=2, inner_group_num=2),
    "electra": dict(hidden_act="silu", layer_norm_eps=1e-6, embedding_size=16),
    "xlm_roberta": dict(hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "camembert": dict(hidden_act="gelu_new", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "distilbert": dict(hidden_act="gelu"),
    # 3 layers alternating global / local (window 2 = local_attention // 2, shorter than the test sequences)
    "modernbert": dict(hidden_activation="gelu", norm_eps=1e-5, num_hidden_layers=3, local_attention=4,
                       global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                       sep_token_id=2),
    "gte": dict(hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=1, rope_parameters={"rope_type": "default",
                                                                                          "rope_theta": 500.0}),
    "nomic_bert": dict(hidden_act="silu", layer_norm_eps=1e-12, pad_token_id=0),
}
# DistilBERT's config names its fields differently (and has no token types or layer_norm_eps).
_DISTILBERT_NAMES = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "intermediate_size": "hidden_dim", "hidden_act": "activation", "hidden_dropout_prob": "dropout",
                     "attention_probs_dropout_prob": "attention_dropout"}
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                  summary_last_dropout=0.0)


def variant_of(name: str) -> str:
    return next(v for v in VARIANTS if name.startswith(PREFIX[v]))


def hf_config(variant: str, **overrides: Any) -> Any:
    fields = {**COMMON, **VARIANT_FIELDS[variant], **NO_DROPOUT, **overrides}
    if variant == "albert":
        fields["classifier_dropout_prob"] = fields.pop("classifier_dropout")
    if variant == "distilbert":
        fields = {_DISTILBERT_NAMES.get(k, k): v for k, v in fields.items() if k not in ("type_vocab_size",)}
        fields["seq_classif_dropout"] = fields["qa_dropout"] = fields.pop("classifier_dropout")
    return getattr(transformers, PREFIX[variant] + "Config")(**fields)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init (LayerNorm ones / zero biases would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def build_hf(name: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    if "QuestionAnswering" in name or name == "AlbertForPreTraining":
        overrides.setdefault("num_labels", 2)  # start / end; ALBERT's sentence-order head has num_labels outputs
    model = getattr(transformers, name)(hf_config(variant_of(name), **overrides))
    perturb(model, seed)
    return model.eval()


@functools.cache
def saved_checkpoint(name: str, root: str) -> str:
    """A tiny random transformers model of class `name`, saved once per test session under `root`."""
    path = f"{root}/{name}"
    build_hf(name).save_pretrained(path)
    return path


def hf_and_fastenc(name: str, root: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    path = saved_checkpoint(name, root)
    hf = build_hf(name)
    ours = getattr(fastenc, name).from_pretrained(path)
    return hf, ours


def inputs(variant: str, batch: int = 4, seq: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """Rows: full, right-padded, left-padded, fully padded (batch >= 4); pad ids where the mask is 0. `variant` may
    be a class name: a ForMultipleChoice class gets [batch, CHOICES, seq] (rows of 2 * batch, grouped)."""
    if variant not in VARIANTS:
        name, variant = variant, variant_of(variant)
        if name.endswith("ForMultipleChoice"):
            flat = inputs(variant, batch * CHOICES, seq, seed)
            return {k: v.view(batch, CHOICES, seq) for k, v in flat.items()}
    g = torch.Generator().manual_seed(seed)
    pad = VARIANT_FIELDS[variant].get("pad_token_id", 0)
    ids = torch.randint(3, COMMON["vocab_size"], (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[1, seq * 3 // 5:] = 0
    if batch > 2:
        mask[2, : seq // 3] = 0
    if batch > 3:
        mask[3] = 0
    ids = ids.masked_fill(mask == 0, pad)
    tt = torch.randint(0, 2, (batch, seq), generator=g)
    if variant in ("distilbert", "modernbert"):  # no token types
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def labels_for(name: str, inp: dict[str, torch.Tensor], seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch, seq = inp["input_ids"].shape[0], inp["input_ids"].shape[-1]
    padded = inp["attention_mask"] == 0
    head = name[len(PREFIX[variant_of(name)]):]
    if head == "Model":
        return {}
    if head == "ForMultipleChoice":
        return {"labels": torch.randint(0, CHOICES, (batch,), generator=g)}
    if head == "ForNextSentencePrediction":
        return {"labels": torch.randint(0, 2, (batch,), generator=g)}
    if head == "ForSequenceClassification":
        return {"labels": torch.randint(0, COMMON["num_labels"], (batch,), generator=g)}
    if head == "ForTokenClassification":
        return {"labels": torch.randint(0, COMMON["num_labels"], (batch, seq), generator=g).masked_fill(padded, -100)}
    if head == "ForQuestionAnswering":
        return {"start_positions": torch.randint(0, seq, (batch,), generator=g),
                "end_positions": torch.randint(0, seq, (batch,), generator=g)}
    mlm = torch.randint(0, COMMON["vocab_size"], (batch, seq), generator=g)
    mlm = mlm.masked_fill(padded | (torch.rand(batch, seq, generator=g) < 0.3), -100)
    if head == "ForMaskedLM":
        return {"labels": mlm}
    if name == "BertForPreTraining":
        return {"labels": mlm, "next_sentence_label": torch.randint(0, 2, (batch,), generator=g)}
    if name == "AlbertForPreTraining":
        return {"labels": mlm, "sentence_order_label": torch.randint(0, 2, (batch,), generator=g)}
    return {"labels": torch.randint(0, 2, (batch, seq), generator=g)}  # ELECTRA replaced-token detection


def tensors_of(out: Any) -> dict[str, torch.Tensor]:
    """Flatten a model output into {field[.i]: tensor}; empty tuples (transformers' sdpa attentions) dropped."""
    flat = {}
    for key in out.keys():
        value = out[key]
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, tuple):
            for i, t in enumerate(value):
                flat[f"{key}.{i}"] = t
    return flat


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str, mask: Any = None,
                 floor: float = 1e-9) -> None:
    """max |a - e| <= rel * max |e| + floor; NaN / inf never pass. Gradients use a floor of 1e-5 x the largest
    gradient of the model: some are zero in exact arithmetic (key biases: softmax ignores a per-query shift;
    the last LayerNorm bias under the QA loss) and are compared as rounding noise."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    if mask is not None:
        a, e = a[mask], e[mask]
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    assert torch.isfinite(e).all(), f"{name}: non-finite reference values"
    err = (a - e).abs().max().item() if a.numel() else 0.0
    scale = e.abs().max().item() if e.numel() else 0.0
    assert err <= rel * scale + floor, f"{name}: max error {err:.3g} > {rel} * max |ref| {scale:.3g}"


def assert_outputs_close(ours: Any, ref: Any, rel: float, skip: tuple[str, ...] = ()) -> None:
    mine, theirs = tensors_of(ours), tensors_of(ref)
    theirs = {k: v for k, v in theirs.items() if not k.startswith(skip)}
    assert set(theirs) <= set(mine), f"missing fields: {sorted(set(theirs) - set(mine))}"
    for key, expected in theirs.items():
        assert_close(mine[key], expected, rel, key)


def scalar_objective(out: Any, seed: int = 3) -> torch.Tensor:
    """The loss if there is one, else a fixed random projection of every output tensor."""
    if getattr(out, "loss", None) is not None:
        return out.loss
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in tensors_of(out).values():
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


def assert_grads_close(ours: torch.nn.Module, ref: torch.nn.Module, rel: float) -> None:
    mine = dict(ours.named_parameters())
    theirs = dict(ref.named_parameters())
    assert set(mine) == set(theirs), f"parameter names differ: {sorted(set(mine) ^ set(theirs))}"
    scale = max(p.grad.abs().max().item() for p in theirs.values() if p.grad is not None)
    checked = 0
    for key, p in theirs.items():
        g_ref = p.grad if p.grad is not None else torch.zeros_like(p)
        g = mine[key].grad if mine[key].grad is not None else torch.zeros_like(mine[key])
        assert_close(g, g_ref, rel, f"grad {key}", floor=1e-5 * scale)
        checked += int(p.grad is not None)
    assert checked > 0, "no gradients were compared"
