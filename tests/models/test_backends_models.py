"""Whole models on each backend ("torch" reference, "triton" kernels; on CPU the Triton interpreter runs them), every
base and head (batch 3 x seq 8) against transformers: eval outputs and, with dropout off, the training loss and every
parameter's gradient; the packed path on real positions."""

from __future__ import annotations

import pytest
import torch

import fastenc
from tests.models.harness import (
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    inputs,
    labels_for,
)

BACKENDS = ["torch", "triton"]
SUBSET = [name for name, cls in fastenc.models.MODEL_CLASSES.items()  # every base and every head
          if cls._fastenc_hf_class is not None]  # of the families the installed transformers has


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SUBSET)
def test_model_on_backend_matches_transformers(name, backend):
    small = dict(num_hidden_layers=2, num_hidden_groups=1, inner_group_num=1) if name.startswith("Albert") else {}
    hf = build_hf(name, **small)
    ours = fastenc.from_hf(build_hf(name, **small))
    inp = inputs(name, batch=3, seq=8)  # a left-padded row: the padded path, exact at every position
    lab = labels_for(name, inp)
    with fastenc.use_backend(backend):
        with torch.no_grad():
            out = ours(**inp)
        hf.train()
        ours.train()
        loss = ours(**inp, **lab)
    with torch.no_grad():
        ref = hf.eval()(**inp)
    assert_outputs_close(out, ref, 1e-4)
    hf.train()
    ref_loss = hf(**inp, **lab)
    objective = [getattr(o, "loss", None) for o in (loss, ref_loss)]
    if objective[0] is None:
        g = torch.Generator().manual_seed(3)
        w = torch.randn(ref_loss.last_hidden_state.shape, generator=g)
        objective = [(o.last_hidden_state * w).sum() for o in (loss, ref_loss)]
    assert_close(objective[0], objective[1], 1e-4, "loss")
    with fastenc.use_backend(backend):
        objective[0].backward()
    objective[1].backward()
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_path_on_backend(backend):
    """A right-padded batch takes the packed path by default: real positions, loss and gradients as transformers."""
    name = "BertForTokenClassification"
    hf = build_hf(name)
    ours = fastenc.from_hf(build_hf(name))
    inp = inputs("bert", batch=2, seq=8)
    lab = labels_for(name, inp)
    real = inp["attention_mask"].bool()
    with fastenc.use_backend(backend), torch.no_grad():
        out = ours.eval()(**inp)
    with torch.no_grad():
        ref = hf.eval()(**inp)
    assert_close(out.logits, ref.logits, 1e-4, "logits", mask=real)
    hf.train()
    ours.train()
    with fastenc.use_backend(backend):
        loss = ours(**inp, **lab).loss
        loss.backward()
    ref_loss = hf(**inp, **lab).loss
    ref_loss.backward()
    assert_close(loss, ref_loss, 1e-4, "loss")
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", SUBSET)
def test_model_on_cuda_auto_backend(name, dtype):
    """CUDA tensors, backend "auto" (cuda > triton > torch): eval outputs and training gradients against the float64
    reference run of the same model, within twice transformers' own error at that dtype plus a small atol."""
    import copy

    from tests.helpers import assert_close_to_ref

    hf = build_hf(name)
    inp = inputs(name, batch=4, seq=16)
    lab = labels_for(name, inp)
    ref64 = fastenc.from_hf(copy.deepcopy(hf).double()).train()
    ours = fastenc.from_hf(copy.deepcopy(hf).to("cuda", dtype)).train()
    hf_low = copy.deepcopy(hf).to("cuda", dtype).train()
    cuda_inp = {k: v.cuda() for k, v in inp.items()}
    cuda_lab = {k: v.cuda() for k, v in lab.items()}
    atol = 1e-3 if dtype == torch.float32 else 5e-3
    outs = [ref64(**inp, **lab), ours(**cuda_inp, **cuda_lab), hf_low(**cuda_inp, **cuda_lab)]
    for key in outs[0].keys():
        if isinstance(outs[0][key], torch.Tensor):
            assert_close_to_ref(outs[1][key].cpu(), outs[0][key].double(), outs[2][key].cpu(), atol=atol, name=key)
    g = torch.Generator().manual_seed(3)
    first = outs[0][0]
    w = torch.randn(first.shape, generator=g, dtype=torch.float64)
    for out in outs:
        (out[0] * w.to(out[0].device, out[0].dtype)).sum().backward()
    mine, theirs = dict(ours.named_parameters()), dict(hf_low.named_parameters())
    for key, p in ref64.named_parameters():
        if p.grad is None:
            continue
        scale = max(p.grad.abs().max().item(), 1e-3)
        assert_close_to_ref(mine[key].grad.cpu(), p.grad, theirs[key].grad.cpu(), atol=atol * scale, name=key)
