"""fastenc.cuda_graphs (fastenc/graphs.py): bucketing, padding and trimming on CPU (capture=False runs the same path
without graphs); capture, replay and shape changes on a GPU (kernl's bug ELS-RD/kernl#338: stale inputs / wrong
graph after a shape change)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

import fastenc
from fastenc.graphs import CudaGraphModel, cuda_graphs, pad_inputs, round_up

VOCAB = 50


def _config(**kw) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, **kw)


def _batch(b: int, s: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (b, s), device=device)
    lens = torch.randint(1, s + 1, (b,), device=device)
    lens[0] = s
    mask = (torch.arange(s, device=device)[None, :] < lens[:, None]).long()
    tt = torch.randint(0, 2, (b, s), device=device)
    return ids, mask, tt


def _check_real_positions(out, ref, mask) -> None:
    keep = mask.bool()
    got, want = out.last_hidden_state, ref.last_hidden_state
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-5, atol=1e-5)


def test_round_up_and_errors():
    assert round_up(3, (1, 2, 4, 8), "batch size") == 4
    assert round_up(4, (1, 2, 4, 8), "batch size") == 4
    with pytest.raises(ValueError, match="sequence length 9 is above the largest bucket 8"):
        round_up(9, (2, 8), "sequence length")
    with pytest.raises(ValueError, match="seq_buckets"):
        CudaGraphModel(BertModel(_config()), seq_buckets=())


def test_pad_inputs_rewrites_every_element():
    static = {n: torch.full((4, 8), 77, dtype=torch.long) for n in ("input_ids", "attention_mask", "token_type_ids")}
    ids, mask, tt = _batch(4, 8)
    pad_inputs({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}, static, pad_token_id=0)
    small_ids, small_mask, small_tt = _batch(2, 5)
    pad_inputs({"input_ids": small_ids, "attention_mask": small_mask, "token_type_ids": small_tt}, static, 0)
    torch.testing.assert_close(static["input_ids"][:2, :5], small_ids)
    torch.testing.assert_close(static["attention_mask"][:2, :5], small_mask)
    torch.testing.assert_close(static["token_type_ids"][:2, :5], small_tt)
    assert (static["input_ids"][:2, 5:] == 0).all() and (static["input_ids"][2:] == 0).all()
    assert (static["attention_mask"][:2, 5:] == 0).all()
    # padded rows attend to their first position only, so no row is empty of keys
    torch.testing.assert_close(static["attention_mask"][2:], torch.tensor([[1] + [0] * 7] * 2))
    assert (static["token_type_ids"][:2, 5:] == 0).all() and (static["token_type_ids"][2:] == 0).all()


def test_bucketed_path_matches_unbucketed_model_on_cpu():
    model = BertModel(_config()).eval()
    runner = CudaGraphModel(model, batch_buckets=(2, 4), seq_buckets=(8, 16), capture=False)
    for b, s in ((3, 11), (1, 5), (4, 16), (2, 8), (3, 3)):  # shrinking and growing: no state may leak
        ids, mask, tt = _batch(b, s)
        out = runner(ids, mask, tt)
        with torch.no_grad():
            ref = model(ids, attention_mask=mask, token_type_ids=tt)
        _check_real_positions(out, ref, mask)
    ids, _, _ = _batch(2, 6)
    torch.testing.assert_close(runner(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_trim_uses_probed_dims_not_sizes():
    """A classifier with as many labels as the seq bucket: logits [B, 8] must keep all 8 columns."""
    model = BertForSequenceClassification(_config(num_labels=8)).eval()
    runner = CudaGraphModel(model, batch_buckets=(4,), seq_buckets=(8,), capture=False, output_hidden_states=True)
    ids, mask, tt = _batch(3, 5)
    out = runner(ids, mask, tt)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    assert out.logits.shape == (3, 8)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 5, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1][mask.bool()], ref.hidden_states[-1][mask.bool()],
                               rtol=1e-5, atol=1e-5)


def test_errors_name_the_argument():
    model = BertModel(_config()).eval()
    graphs = cuda_graphs(model, batch_buckets=(2,), seq_buckets=(8,))
    ids, mask, _ = _batch(2, 8)
    with pytest.raises(ValueError, match="input_ids is on cpu"):
        graphs(ids, mask)
    runner = CudaGraphModel(model, batch_buckets=(2,), seq_buckets=(8,), capture=False)
    with pytest.raises(ValueError, match="batch size 3 is above the largest bucket 2"):
        runner(*_batch(3, 4)[:2])
    with pytest.raises(ValueError, match="attention_mask must be a tensor of input_ids' shape"):
        runner(ids, mask[:, :4])
    model.train()
    with pytest.raises(RuntimeError, match="model.eval"):
        runner(ids, mask)


@pytest.mark.gpu
@pytest.mark.parametrize("optimized", [False, True], ids=["transformers", "fastenc.optimize"])
def test_graphs_replay_and_shape_changes(optimized):
    model = BertModel(_config()).cuda().eval()
    if optimized:
        fastenc.optimize(model)
    graphs = cuda_graphs(model, batch_buckets=(2, 4), seq_buckets=(8, 16))
    kept = []
    for b, s in ((4, 16), (1, 3), (3, 9), (4, 16), (2, 8), (1, 16), (3, 9)):
        ids, mask, tt = _batch(b, s, "cuda")
        out = graphs(ids, mask, tt)
        with torch.no_grad():
            ref = model(ids, attention_mask=mask, token_type_ids=tt)
        _check_real_positions(out, ref, mask)
        kept.append((out, ref, mask))
    assert graphs.num_graphs == 3  # buckets (4, 16), (2, 8), (2, 16); the other calls replay them
    for out, ref, mask in kept:  # outputs are clones: later replays did not overwrite them
        _check_real_positions(out, ref, mask)
