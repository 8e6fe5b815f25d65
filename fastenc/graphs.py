"""CUDA graphs for encoder inference when shapes change from call to call.

A CUDA graph replays fixed kernels on fixed addresses, so it only serves inputs of the shape it was captured with.
`cuda_graphs(model)` rounds each call's (batch, seq) up to a bucket, copies the inputs into that bucket's static
buffers, replays the bucket's graph (captured on first use) and trims the outputs back to the caller's shape.

Correctness when shapes change (kernl's graphs break there, ELS-RD/kernl#338: a graph captured for one shape was
replayed with another, and static inputs kept stale values from an earlier, larger call):
  - one graph per (batch bucket, seq bucket, set of input names), never replayed for another bucket;
  - every call rewrites every element of the bucket's static inputs: the caller's tokens, then padding ids with
    attention_mask 0 on padded positions; padded batch rows attend to their first position only, so no row is
    empty of keys (an all-masked row is NaN in some attention implementations);
  - the outputs are cloned out of the graph's memory before returning, so a later replay (of any bucket: all graphs
    share one memory pool) never overwrites what a caller holds.

Which output dims follow the batch and the sequence is probed once, eagerly, on two tiny inputs, instead of being
guessed from sizes (a classifier with as many labels as the seq bucket would fool a size test).

Trade-off: padding costs up to one bucket step of wasted compute per call, and each bucket holds a graph and its
static buffers; in exchange the launch overhead of hundreds of small kernels disappears, which dominates at small
batch. The pad -> model -> trim path runs without graphs (`capture=False`) on any device, which is how it is tested
on CPU.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _check_buckets(buckets: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {buckets!r}")
    return out


def round_up(n: int, buckets: tuple[int, ...], name: str) -> int:
    """The smallest bucket >= n; raises ValueError naming `name` when n is above the largest."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{name} {n} is above the largest bucket {buckets[-1]}; add a larger bucket")
    return buckets[i]


def pad_inputs(inputs: Mapping[str, torch.Tensor], static: Mapping[str, torch.Tensor], pad_token_id: int) -> None:
    """Write `inputs` ([B, S] each) into the bucket buffers `static` ([Bb, Sb], Bb >= B, Sb >= S), every element.

    Real tokens keep their values; padded positions get pad_token_id (input_ids), 0 (attention_mask,
    token_type_ids); padded rows attend to their first position only. A missing attention_mask means all ones.
    """
    b, s = inputs["input_ids"].shape
    for name, buf in static.items():
        fill = pad_token_id if name == "input_ids" else 0
        buf[:b, s:].fill_(fill)
        buf[b:].fill_(fill)
        if name == "attention_mask":
            mask = inputs.get("attention_mask")
            if mask is None:
                buf[:b, :s].fill_(1)
            else:
                buf[:b, :s].copy_(mask)
            buf[b:, 0].fill_(1)
        else:
            buf[:b, :s].copy_(inputs[name])


def _leaves(out: Any, prefix: tuple = ()) -> list[tuple[tuple, torch.Tensor]]:
    """(path, tensor) for each tensor in a model output: a tensor, a ModelOutput / dict, a tuple or list."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        return [leaf for k, v in out.items() for leaf in _leaves(v, (*prefix, k))]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in _leaves(v, (*prefix, i))]
    return []


def _map(out: Any, fn: Callable[[tuple, torch.Tensor], torch.Tensor], prefix: tuple = ()) -> Any:
    """Rebuild a model output with fn(path, tensor) in place of each tensor (same container types)."""
    if isinstance(out, torch.Tensor):
        return fn(prefix, out)
    if isinstance(out, Mapping):
        return type(out)(**{k: _map(v, fn, (*prefix, k)) for k, v in out.items()})
    if isinstance(out, (tuple, list)):
        return type(out)(_map(v, fn, (*prefix, i)) for i, v in enumerate(out))
    return out


def trim_outputs(out: Any, batch: int, seq: int, dims: Mapping[tuple, tuple[bool, bool]]) -> Any:
    """Cut each output tensor back to the caller's shape and clone it out of the static memory.

    dims[path] = (dim 0 follows the batch, dim 1 follows the sequence), from `probe_output_dims`.
    """

    def cut(path: tuple, t: torch.Tensor) -> torch.Tensor:
        follows_batch, follows_seq = dims.get(path, (False, False))
        if follows_batch:
            t = t[:batch]
        if follows_seq:
            t = t[:, :seq]
        return t.clone()

    return _map(out, cut)


def probe_output_dims(run: Callable[[dict[str, torch.Tensor]], Any], names: Sequence[str], device: torch.device,
                      seq: int, pad_token_id: int) -> dict[tuple, tuple[bool, bool]]:
    """Run the model eagerly at (1, seq) and (2, seq + 1) and record which output dims followed the input's."""
    shapes = []
    for b, s in ((1, seq), (2, seq + 1)):
        ids = torch.full((b, s), pad_token_id, dtype=torch.long, device=device)
        inputs = {n: (ids if n == "input_ids" else torch.ones_like(ids) if n == "attention_mask"
                      else torch.zeros_like(ids)) for n in names}
        shapes.append({path: t.shape for path, t in _leaves(run(inputs))})
    first, second = shapes
    dims = {}
    for path, a in first.items():
        z = second.get(path)
        if z is None:
            continue
        dims[path] = (len(a) > 0 and (a[0], z[0]) == (1, 2), len(a) > 1 and (a[1], z[1]) == (seq, seq + 1))
    return dims


class _Bucket:
    """Static inputs, and (in graph mode) the captured graph and its static outputs, for one bucket."""

    def __init__(self, static: dict[str, torch.Tensor]):
        self.static = static
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None


class CudaGraphModel:
    """Callable wrapper around an encoder: `wrapper(input_ids, attention_mask=None, token_type_ids=None)`.

    Returns the model's own output type (ModelOutput or tuple), trimmed to the caller's [B, S] and cloned.
    Inference only: the model must be in eval mode; calls run under torch.no_grad().
    capture=False runs the same pad -> model -> trim path eagerly, without graphs, on any device.
    """

    def __init__(self, model: torch.nn.Module, batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                 seq_buckets: Sequence[int] = DEFAULT_SEQ_BUCKETS, *, pad_token_id: int | None = None,
                 warmup: int = 2, capture: bool = True, **model_kwargs: Any):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (side-stream runs before capture), got {warmup}")
        self.model = model
        self.batch_buckets = _check_buckets(batch_buckets, "batch_buckets")
        self.seq_buckets = _check_buckets(seq_buckets, "seq_buckets")
        if pad_token_id is None:
            pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
        self.pad_token_id = int(pad_token_id)
        self.warmup = int(warmup)
        self.capture = bool(capture)
        self.model_kwargs = model_kwargs
        self._buckets: dict[tuple[int, int, tuple[str, ...]], _Bucket] = {}
        self._dims: dict[tuple[str, ...], dict[tuple, tuple[bool, bool]]] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        return sum(b.graph is not None for b in self._buckets.values())

    def _run_model(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.model(**inputs, **self.model_kwargs)

    def _check(self, inputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        ids = inputs["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"input_ids must be a [batch, seq] tensor, got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.is_floating_point():
            raise TypeError(f"input_ids must hold integer ids, got dtype {ids.dtype}")
        present = {}
        for name, t in inputs.items():
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.shape != ids.shape:
                raise ValueError(f"{name} must be a tensor of input_ids' shape {tuple(ids.shape)}, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if self.capture and not t.is_cuda:
                raise ValueError(f"{name} is on {t.device}: CUDA graphs need CUDA tensors (move the inputs and the "
                                 f"model to a GPU, or use capture=False)")
            present[name] = t
        if self.model.training:
            raise RuntimeError("cuda_graphs is inference only: call model.eval() first")
        return present

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> Any:
        inputs = self._check({"input_ids": input_ids, "attention_mask": attention_mask,
                              "token_type_ids": token_type_ids})
        b, s = input_ids.shape
        bb = round_up(b, self.batch_buckets, "batch size")
        sb = round_up(s, self.seq_buckets, "sequence length")
        # the graph always reads a mask: padded positions must be masked out even when the caller sent none
        names = tuple(n for n in INPUT_NAMES if n in inputs or n == "attention_mask")
        with torch.no_grad():
            if names not in self._dims:
                self._dims[names] = probe_output_dims(self._run_model, names, input_ids.device, self.seq_buckets[0],
                                                      self.pad_token_id)
            bucket = self._bucket(bb, sb, names, input_ids.device)
            pad_inputs(inputs, bucket.static, self.pad_token_id)
            if not self.capture:
                out = self._run_model(bucket.static)
            else:
                if bucket.graph is None:
                    self._capture(bucket)
                bucket.graph.replay()
                out = bucket.out
            return trim_outputs(out, b, s, self._dims[names])

    def _bucket(self, bb: int, sb: int, names: tuple[str, ...], device: torch.device) -> _Bucket:
        key = (bb, sb, names)
        if key not in self._buckets:
            self._buckets[key] = _Bucket({n: torch.zeros(bb, sb, dtype=torch.long, device=device) for n in names})
        return self._buckets[key]

    def _capture(self, bucket: _Bucket) -> None:
        """Warm up on a side stream (lazy inits, autotuning, allocator), then capture into the shared pool."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run_model(bucket.static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            bucket.out = self._run_model(bucket.static)
        bucket.graph = graph


def cuda_graphs(model: torch.nn.Module, batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                seq_buckets: Sequence[int] = DEFAULT_SEQ_BUCKETS, *, pad_token_id: int | None = None,
                warmup: int = 2, **model_kwargs: Any) -> CudaGraphModel:
    """Wrap an eval-mode encoder on a GPU so that each (batch, seq) bucket runs as one replayed CUDA graph.

    The wrapper takes input_ids, attention_mask, token_type_ids ([B, S] CUDA tensors) and returns the model's
    output with every tensor trimmed to [B, S, ...] and cloned (safe to keep across calls). model_kwargs are passed
    to every model call (e.g. return_dict=False). Raises ValueError on CPU tensors or on a batch / sequence length
    above the largest bucket.
    """
    return CudaGraphModel(model, batch_buckets, seq_buckets, pad_token_id=pad_token_id, warmup=warmup,
                          capture=True, **model_kwargs)
