"""torch.compile and torch.export with changing shapes, against transformers' own model compiled the same way in the
same test: no error and no graph break with fullgraph, no more graphs than transformers, outputs and
gradients equal to transformers'; the exported program runs at other shapes with transformers' numbers; the HF
Trainer with torch_compile and dynamic padding trains with transformers' losses.

Cost (CI: 2 cores for the whole suite): one family (BERT) is run thoroughly (AOT autograd, default compile,
export, Trainer); the other families run fullgraph + dynamic on dynamo's "eager" backend, whose compile is the
dynamo trace alone. Every model has 2 layers and hidden size 32; once a dynamic graph exists, more shapes cost
milliseconds, so the shape schedule is long and the number of compilations small.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import fastenc
from tests.models.harness import (
    ROTARY,
    assert_close,
    assert_outputs_close,
    build_hf,
    inputs,
    labels_for,
    scalar_objective,
)

SEQ_LENS = (5, 6, 7, 9, 11, 13, 16, 19, 23, 29)  # sizes 0 and 1 are specialised by torch for every model alike
BATCHES = (2, 3, 5)
REL = 1e-5
# one head per family, different heads across families so every loss form is traced once
FAMILY_HEADS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForMaskedLM",
                "albert": "AlbertForTokenClassification", "electra": "ElectraForPreTraining",
                "xlm_roberta": "XLMRobertaForQuestionAnswering", "camembert": "CamembertForMultipleChoice",
                "distilbert": "DistilBertForSequenceClassification", "modernbert": "ModernBertForTokenClassification",
                **{family: head for family, head in (("gte", "GteForTokenClassification"),
                                                     ("nomic_bert", "NomicBertForMaskedLM")) if family in ROTARY}}
SWEEP = [name for family, head in FAMILY_HEADS.items()
         for name in ("DistilBertModel" if family == "distilbert" else f"{head.split('For')[0]}Model", head)]


def graphs() -> int:
    """Graphs dynamo compiled since counters.clear(): frames compiled, recompilations and the pieces between graph
    breaks (a trace that dynamo restarts, e.g. to specialise a float, is not a graph)."""
    return counters["stats"]["unique_graphs"]


def calls(name: str, masks: tuple[str, ...] = ("padded", "none", "full")) -> list[dict[str, torch.Tensor]]:
    """Every sequence length once, the batch sizes in turn, the mask kinds in turn: "padded" (full, right-, left- and
    fully padded rows, see harness.inputs), "full" (a mask of ones) or "none"; with the head's labels."""
    out = []
    for i, seq in enumerate(SEQ_LENS):
        inp = inputs(name, batch=BATCHES[i % len(BATCHES)], seq=seq, seed=i)
        kind = masks[i % len(masks)]
        if kind == "full":
            inp["attention_mask"] = torch.ones_like(inp["attention_mask"])
        inp.update(labels_for(name, inp, seed=i))
        if kind == "none":
            del inp["attention_mask"]
        out.append(inp)
    return out


def run_compiled(model: torch.nn.Module, batches: list[dict], backend: str, backward: bool, **options) -> tuple:
    """(graphs, graph breaks, [(output, gradients or None) per call]) of torch.compile(model) over `batches`."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend, **options)
    results = []
    for inp in batches:
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            out = compiled(**inp)
            if backward:
                scalar_objective(out).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None} if backward else None
        results.append((out, grads))
    return graphs(), sum(counters["graph_break"].values()), results


def assert_same_results(ours: list, theirs: list) -> None:
    for i, ((out, grads), (ref, ref_grads)) in enumerate(zip(ours, theirs, strict=True)):
        assert_outputs_close(out, ref, REL)
        if ref_grads is not None:
            assert set(grads) == set(ref_grads), f"call {i}: parameters with gradients differ"
            scale = max(g.abs().max().item() for g in ref_grads.values())
            for key, g in ref_grads.items():
                assert_close(grads[key], g, REL, f"call {i}: grad {key}", floor=1e-5 * scale)


def compare(name: str, backend: str, backward: bool, masks: tuple[str, ...] = ("padded", "none", "full"),
            **options) -> tuple[tuple[int, int], tuple[int, int]]:
    """Compile transformers' model and fastenc's twin the same way over the same calls; check the results agree.
    Returns ((fastenc graphs, breaks), (transformers graphs, breaks))."""
    batches = calls(name, masks)
    hf = build_hf(name).train(backward)
    ours = fastenc.from_hf(build_hf(name)).train(backward)
    their_graphs, their_breaks, theirs = run_compiled(hf, batches, backend, backward, **options)
    our_graphs, our_breaks, mine = run_compiled(ours, batches, backend, backward, **options)
    assert_same_results(mine, theirs)
    return (our_graphs, our_breaks), (their_graphs, their_breaks)


def test_dynamic_fullgraph_thorough_forward_and_backward():
    """AOT autograd (the graphs of the backward pass too) over 10 lengths x 3 batch sizes, with and without a mask.
    (The head compiles a third graph in either model: its first call sets config.problem_type, which the first
    graph guards on.)"""
    (ours, breaks), (theirs, _) = compare("BertForSequenceClassification", "aot_eager", True, masks=("padded", "none"),
                                          fullgraph=True, dynamic=True)
    assert breaks == 0 and ours <= theirs, f"fastenc {ours} graphs, transformers {theirs}"


@pytest.mark.parametrize("name", SWEEP)
def test_dynamic_fullgraph_every_family(name):
    """Base model and one head of every family: fullgraph + dynamic, forward and backward, padded and all-real
    masks (no mask: the thorough test; a second graph for either model)."""
    (ours, breaks), (theirs, _) = compare(name, "eager", True, masks=("padded", "full"), fullgraph=True,
                                          dynamic=True)
    assert breaks == 0 and ours <= theirs, f"{name}: fastenc {ours} graphs, transformers {theirs}"


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor compiles C++ on the CPU: no compiler here")
def test_dynamic_fullgraph_inductor_forward():
    """inductor where a C++ compiler exists (the fakes' shapes and strides are what it plans buffers from): BERT's
    forward, fullgraph + dynamic over every length and batch size (one graph for either model, the mask padded)."""
    (ours, breaks), (theirs, _) = compare("BertModel", "inductor", False, masks=("padded",), fullgraph=True,
                                          dynamic=True)
    assert breaks == 0 and ours <= theirs, f"fastenc {ours} graphs, transformers {theirs}"


def test_default_compile_recompiles_no_more_than_transformers():
    """Plain torch.compile(model): a first static graph, then automatic dynamic shapes."""
    (ours, breaks), (theirs, their_breaks) = compare("BertModel", "eager", False, masks=("padded",))
    assert ours <= theirs and breaks <= their_breaks, f"fastenc {ours} graphs / {breaks} breaks, " \
                                                      f"transformers {theirs} / {their_breaks}"


def _export_dims(name: str, inp: dict, batch, seq) -> dict:
    seq_dim = 2 if name.endswith("ForMultipleChoice") else 1
    return {k: {0: batch, seq_dim: seq} for k in inp}


@pytest.mark.parametrize("name", SWEEP)
def test_export_with_dynamic_batch_and_sequence_runs_at_other_shapes(name):
    """torch.export.export with Dims for batch and sequence; the program runs at other shapes with transformers'
    numbers (RoBERTa's positions start at 2: 62 fit in 64, so the sequence Dim stops at 60)."""
    from torch.export import Dim

    hf = build_hf(name)
    ours = fastenc.from_hf(build_hf(name))
    inp = inputs(name, batch=4, seq=10)
    dims = _export_dims(name, inp, Dim("batch"), Dim("seq", max=60))
    try:
        program = torch.export.export(ours, (), inp, dynamic_shapes=dims)
    except Exception as e:  # only where transformers' own model does not export either (torch 2.11, multiple choice)
        try:
            torch.export.export(hf, (), inp, dynamic_shapes=dims)
        except Exception as theirs:
            pytest.skip(f"transformers' own {name} does not export with these Dims on torch {torch.__version__}: "
                        f"{str(theirs).splitlines()[0]}")
        raise e
    for batch, seq in ((2, 7), (5, 23)):
        other = inputs(name, batch=batch, seq=seq, seed=batch)
        with torch.no_grad():
            assert_outputs_close(program.module()(**other), hf(**other), REL)


def test_export_with_automatic_dims_is_not_pinned_to_the_traced_shape():
    from torch.export import Dim

    name = "BertForMaskedLM"
    hf = build_hf(name)
    ours = fastenc.from_hf(build_hf(name))
    inp = inputs(name, batch=3, seq=9)
    program = torch.export.export(ours, (), inp, dynamic_shapes=_export_dims(name, inp, Dim.AUTO, Dim.AUTO))
    other = inputs(name, batch=5, seq=17, seed=5)
    with torch.no_grad():
        assert_outputs_close(program.module()(**other), hf(**other), REL)


def test_hf_trainer_with_torch_compile_and_dynamic_padding(tmp_path):
    """transformers' Trainer (torch_compile=True, dynamo's eager backend) on batches padded to their own longest
    row: 5 steps give transformers' losses and parameters, with no more graphs than transformers' model."""
    pytest.importorskip("accelerate")
    import transformers as tf

    name = "BertForSequenceClassification"
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 30, (10,), generator=g).tolist()
    rows = [{"input_ids": torch.randint(3, 99, (n,), generator=g).tolist(), "labels": i % 3}
            for i, n in enumerate(lengths)]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [0] * (longest - len(r["input_ids"])) for r in batch])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in batch])}

    runs = []
    for fast in (False, True):
        model = build_hf(name).train()
        if fast:
            model = fastenc.from_hf(model)
        args = tf.TrainingArguments(output_dir=str(tmp_path / str(fast)), per_device_train_batch_size=2, max_steps=5,
                                    optim="sgd", learning_rate=0.5, report_to=[], use_cpu=True, save_strategy="no",
                                    logging_strategy="steps", logging_steps=1, dataloader_num_workers=0, seed=0,
                                    torch_compile=True, torch_compile_backend="eager")
        torch._dynamo.reset()
        counters.clear()
        trainer = tf.Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        runs.append((losses, graphs(), model.state_dict()))
    (ref_losses, ref_graphs, ref_state), (losses, our_graphs, state) = runs
    assert len(ref_losses) == 5 and 0 < our_graphs <= ref_graphs, (our_graphs, ref_graphs)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=0, atol=2e-4)  # logged rounded
    for k, v in ref_state.items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
