"""Run-time machinery of the models: the fused-QKV weight cache follows in-place weight updates, gradient
checkpointing gives the same gradients, and torch.compile traces the padded path without a graph break."""

from __future__ import annotations

import torch

import fastenc
from tests.models.harness import assert_close, assert_grads_close, assert_outputs_close, build_hf, inputs, labels_for


def test_qkv_cache_follows_in_place_updates():
    """The fused QKV matmul (and its cached weight) runs where fastenc's kernels do: the triton backend here."""
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    with torch.no_grad(), fastenc.use_backend("triton"):
        first = ours(**inp).last_hidden_state
        assert ours.encoder.layer[0].attention.self.__dict__.get("_fastenc_qkv") is not None
        hf.encoder.layer[0].attention.self.value.weight.mul_(1.5)  # shared tensor: an optimizer-style update
        hf.encoder.layer[1].attention.self.query.bias.add_(0.3)
        second = ours(**inp)
        assert_outputs_close(second, hf(**inp), 1e-5)
    assert (second.last_hidden_state - first).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    name = "RobertaForMaskedLM"  # transformers' ALBERT does not support gradient checkpointing
    plain = fastenc.from_hf(build_hf(name)).train()
    ckpt = fastenc.from_hf(build_hf(name)).train()
    ckpt.gradient_checkpointing_enable()
    assert ckpt.is_gradient_checkpointing
    inp = inputs("roberta", batch=3)
    lab = labels_for(name, inp)
    losses = [m(**inp, **lab).loss for m in (plain, ckpt)]
    assert_close(losses[1], losses[0], 1e-6, "loss")
    for loss in losses:
        loss.backward()
    assert_grads_close(ckpt, plain, 1e-5)


def test_torch_compile_padded_path_has_no_graph_break():
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_outputs_close(compiled(**inp), hf(**inp), 1e-5)


def test_output_container_and_embedding_accessors():
    hf = build_hf("ElectraForMaskedLM")
    ours = fastenc.from_hf(hf)
    inp = inputs("electra", batch=2)
    with torch.no_grad():
        out = ours(**inp, output_hidden_states=True)
    assert list(out.keys()) == ["logits", "hidden_states"] and "loss" not in out
    assert out.get("loss") is None and out.get("logits") is out.logits is out[0] is out["logits"]
    assert len(out) == 2 and out.to_tuple()[1] is out.hidden_states
    assert ours.get_output_embeddings() is ours.generator_lm_head
    assert ours.get_input_embeddings().weight is ours.get_output_embeddings().weight
    assert fastenc.from_hf(build_hf("BertModel")).get_output_embeddings() is None


def test_dropout_only_in_train_mode():
    hf = build_hf("BertForMaskedLM", hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    with torch.no_grad():
        a, b = ours(**inp).logits, ours(**inp).logits
        assert torch.equal(a, b)
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
    ours.train()
    for unpad in (False, True):
        c, d = ours(**inp, unpad=unpad).logits, ours(**inp, unpad=unpad).logits
        assert torch.isfinite(c).all() and (c - d).abs().max() > 1e-3


def test_layers_call_their_blocks_directly_unless_hooked(monkeypatch):
    """With no hooks, a swapped layer runs its blocks' forwards itself (transformers' attention wrapper is not
    called); a hook on any block sends that layer through the module calls and the hook runs
    (a pre-hook that changes a Linear's input changes the output exactly as in transformers: the Linear is called)."""
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    wrapper = type(ours.encoder.layer[0].attention)
    calls = []
    forward = wrapper.forward
    monkeypatch.setattr(wrapper, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    with torch.no_grad(), fastenc.use_backend("triton"):
        out = ours(**inp)
        assert calls == []  # (transformers' own model calls it: checked before hf runs)
        assert_outputs_close(out, hf(**inp), 1e-5)
        calls.clear()
        seen = []
        for model in (ours, hf):  # fastenc.from_hf shares the parameters, not the modules
            model.encoder.layer[1].output.register_forward_hook(lambda m, a, out: seen.append(out.shape))
            model.encoder.layer[0].intermediate.dense.register_forward_pre_hook(lambda m, a: (a[0] * 1.5,))
        out = ours(**inp)
        assert calls == [1] and len(seen) == 1  # layer 1 through the modules, its hook ran; layer 0 calls its
        # hooked projection as a module (the fused path only reads the weights of a Linear with no hooks)
        assert_outputs_close(out, hf(**inp), 1e-5)
        plain = build_hf("BertModel")
        plain.load_state_dict(hf.state_dict())
        assert (out.last_hidden_state - plain(**inp).last_hidden_state).abs().max() > 1e-3  # the pre-hook acted

        class Wrapper(wrapper):  # an attention wrapper with a forward of its own: the layer calls it
            def forward(self, *args, **kwargs):
                calls.append(2)
                return forward(self, *args, **kwargs)

        calls.clear()
        ours.encoder.layer[0].attention.__class__ = Wrapper
        ours(**inp)
        assert calls == [2, 1]  # layer 0: the wrapper; layer 1: still hooked, through the modules


def test_qkv_cache_holds_the_storages_it_was_built_from():
    """A weight given new storage (`.data =`) between calls: the cache keeps the old storage alive, so the new one
    cannot take its address (a caching allocator reuses freed blocks of the same size) and the key sees the change;
    the next call rebuilds the cache, lets the old storage go and uses the new weight."""
    from torch.multiprocessing.reductions import StorageWeakRef

    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    query = ours.encoder.layer[0].attention.self.query
    with torch.no_grad(), fastenc.use_backend("triton"):
        ours(**inp)
        old = StorageWeakRef(query.weight.untyped_storage())
        query.weight.data = torch.randn_like(query.weight)  # the shared Parameter: hf sees it too
        assert not old.expired()
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
        assert old.expired()


def test_parametrised_layer_norms_are_read_through_their_parametrisation():
    """A LayerNorm with a parametrised weight keeps no 'weight' in `_parameters`: the fused blocks (add_layer_norm
    after the attention and the feed-forward, gelu_layer_norm in the MLM head) take the computed weight."""
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    name = "BertForMaskedLM"
    hf, ours = build_hf(name), fastenc.from_hf(build_hf(name))
    for model in (hf, ours):
        layers = model.bert.encoder.layer
        for norm in (layers[0].attention.output.LayerNorm, layers[1].output.LayerNorm,
                     model.cls.predictions.transform.LayerNorm):
            parametrize.register_parametrization(norm, "weight", Doubled())
    inp = inputs("bert", batch=3)
    with torch.no_grad(), fastenc.use_backend("triton"):
        out = ours(**inp)
        assert_outputs_close(out, hf(**inp), 1e-5)
        plain = fastenc.from_hf(build_hf(name))(**inp).logits
    assert (out.logits - plain).abs().max() > 1e-3  # the parametrisation changed the result
