"""`fastenc bench --host`: the host's cost of fastenc per encoder layer, with every kernel launch stubbed out.

On a GPU, eager mode runs at the speed of the host whenever the kernels are short (small batches, training steps of
small models): Python, torch's dispatcher and Triton's launcher per op. This mode measures that cost on any machine.
A 12-layer BERT (hidden 64, 4 heads, batch 2x16 with one padded row) runs forward (inference) and forward+backward
(training, dropout on) with fastenc's triton backend, padded (unpad=False) and packed (the automatic padding-free
path), while every Triton launch does nothing:
  - stub "driver" (when the Triton compiler can run, TRITON_INTERPRET unset): fastenc's launch path runs in full
    through fastenc.precompile's stand-in driver, which compiles for sm_90a once (kept in TRITON_CACHE_DIR) and
    launches nothing: the first launch of a specialisation through Triton's JITFunction.run, repeats through
    fastenc.kernels._launch (the key, then the compiled kernel's launcher). The stand-in reloads its binary on every
    launch through JITFunction.run (its module handle is None), so it overstates Triton's own launch cost a little;
  - stub "interpreter" (TRITON_INTERPRET=1): the interpreter's launch (InterpretedFunction.run) does nothing, so
    Triton's launcher is not counted (the autotuner's config choice is): fastenc's own host work.
torch's own work (the matmuls, the loss) runs on the CPU for real; at this width it is small, and it is counted, as
its launches would be on a GPU. One extra, untimed call counts per call: Triton launches, torch kernels (aten ops
that are not views, allocations or scalar reads) and host syncs (ops whose result the host must wait for on a
GPU: item / bool() / int() / tolist, nonzero, boolean indexing). The baseline, timed in the same run, is
transformers' own sdpa model at the same shape, whole forward on the CPU, compute included.

Each figure is split in two. The torch kernels' share: the counted call records them (op and arguments) and they
are replayed alone, in order, from Python (timing each inside the counting mode would add its own cost per op).
The rest ("other"): Python, torch's dispatch of views and allocations, autograd, fastenc's op calls and
transformers' module calls: the host cost a GPU run pays whatever its kernels cost. On a CPU the torch kernels are
real compute (tiny matmuls included); on a GPU they are launches (figures: benchmarks/results/figures.md). The same
split of transformers' model says what its own Python costs.

The second part compares the CPU path itself: fastenc's default backends against transformers' sdpa model,
BERT-base at 8x128, every row full and with lengths 64..128, inference, side by side.

Trade-off: the stand-in driver needs no GPU and counts Triton's real launch overhead, but not the CUDA
extension's (its launches need a GPU); the CUDA backend's host path is a pybind11 call per op, cheaper than
Triton's.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

LAYERS, HIDDEN, HEADS, INTER, BATCH, SEQ = 12, 64, 4, 256, 2, 16
CPU_SHAPE, CPU_MIN_LEN = (8, 128), 64

_ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "_local_scalar_dense",
                "lift_fresh", "detach", "alias"}
_DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive"}


@dataclass
class Counts:
    """Per call: Triton launches, torch kernels, host syncs, and where each sync came from (op name)."""

    launches: int = 0
    torch_kernels: int = 0
    syncs: int = 0
    sync_ops: list[str] = field(default_factory=list)

    def add_sync(self, op: str) -> None:
        """Count a sync, named by its op and the innermost fastenc / transformers line that asked for it."""
        self.syncs += 1
        where = next((f for f in reversed(traceback.extract_stack()[:-2])
                      if ("fastenc" in f.filename or "transformers" in f.filename) and "bench" not in f.filename),
                     None)
        self.sync_ops.append(op if where is None else f"{op} at {_short(where.filename)}:{where.lineno}")


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    top = max(i for i, p in enumerate(parts) if p in ("fastenc", "transformers", "kernels"))
    return "/".join(parts[top:])


class _Counter(TorchDispatchMode):
    """Counts torch kernels and host syncs of the ops dispatched inside."""

    def __init__(self, counts: Counts, calls: list | None = None) -> None:
        super().__init__()
        self.counts = counts
        self.calls = calls  # when a list: the kernels' (op, args, kwargs), to replay (_replay)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        returns = func._schema.returns
        view = bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        if name == "_local_scalar_dense" or name in _DATA_DEPENDENT or (
                name == "index" and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                        for i in (args[1] if len(args) > 1 else []) if i is not None)):
            self.counts.add_sync(name)
        if not view and name not in _ALLOCATIONS:
            self.counts.torch_kernels += 1
            if self.calls is not None:
                self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _counting(counts: Counts, calls: list | None = None) -> Iterator[None]:
    """Count inside: dispatched ops (above) and Tensor.tolist, which reads data without dispatching on the CPU."""
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counts.add_sync("tolist")
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with _Counter(counts, calls):
            yield
    finally:
        torch.Tensor.tolist = tolist


def _replay(calls: list) -> None:
    """The recorded torch kernels again, alone and in order, called from Python like the model's own torch calls:
    their own time, without the counting mode's (which costs several microseconds per op)."""
    with torch.inference_mode():
        for func, args, kwargs in calls:
            func(*args, **kwargs)


def _stub_kind() -> str:
    from fastenc.kernels._common import interpreter_on

    return "interpreter" if interpreter_on() else "driver"


def stub_unavailable_reason() -> str | None:
    """Why launches cannot be stubbed with the installed triton (a private name the stub reads moved), or None."""
    from fastenc.kernels import _triton_internals as ti

    return ti.unavailable_reason(ti.HOST if _stub_kind() == "interpreter" else ti.PRECOMPILE)


class _Stub:
    """Every Triton launch inside `active()` does nothing; `launches` counts them."""

    def __init__(self) -> None:
        from fastenc.kernels import _triton_internals as ti

        self.kind = _stub_kind()
        ti.require(ti.HOST if self.kind == "interpreter" else ti.PRECOMPILE)
        self.launches = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.kind == "driver":
            from fastenc.precompile.driver import TARGETS, target_driver

            with target_driver(TARGETS["sm_90a"]) as driver:
                driver.on_launch = self._count
                yield
            return
        from fastenc.kernels import _triton_internals as ti

        with ti.interpreter_launches(lambda fn, *args, **kwargs: self._count()):
            yield

    def _count(self) -> None:
        self.launches += 1


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int, clock: Callable[[], float] = time.perf_counter,
               before: Callable[[], Any] | None = None) -> float:
    """Median milliseconds of fn() by `clock`; `before()` runs untimed ahead of each call."""
    times = []
    for i in range(warmup + reps):
        if before is not None:
            before()
        t0 = clock()
        fn()
        if i >= warmup:
            times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def tiny_bert_config(layers: int = LAYERS) -> Any:
    from transformers import BertConfig

    return BertConfig(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=INTER,
                      vocab_size=1000, max_position_embeddings=64)


def _inputs(batch: int, seq: int, lengths: list[int], vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": torch.randint(5, vocab, (batch, seq), generator=g) * mask, "attention_mask": mask}


def _step(model: torch.nn.Module, x: dict, train: bool, unpad: bool | None) -> Callable[[], Any]:
    """One inference forward, or one training forward + backward (the gradients are reset outside the timing)."""
    if not train:
        def forward() -> Any:
            with torch.inference_mode():
                return model(**x, unpad=unpad)
        return forward

    def train_step() -> Any:
        h = model(**x, unpad=unpad).last_hidden_state
        h.float().square().mean().backward()

    return train_step


def _reset(model: torch.nn.Module) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def reset() -> None:
        for p in params:
            p.grad = None

    return reset


class _Plain(torch.nn.Module):
    """transformers' model called like a fastenc one (the unpad keyword dropped)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, unpad: bool | None = None, **kwargs: Any) -> Any:
        return self.model(**kwargs)


@dataclass
class HostRecord:
    layout: str
    mode: str
    host_ms: float
    per_layer_ms: float
    torch_kernel_ms: float  # of host_ms: the torch kernels' own time (replayed alone, median)
    other_per_layer_ms: float  # (host_ms - torch_kernel_ms) / layers: Python, dispatch, autograd, fastenc's ops
    counts: Counts


def _split(step: Callable[[], Any], reset: Callable[[], None], reps: int, warmup: int,
           stub: _Stub | None = None) -> tuple[float, float, Counts]:
    """(median host ms of step, median ms of its torch kernels replayed alone, counts of one call)."""
    ms = _median_ms(step, reps, warmup, time.thread_time, reset)
    counts, calls = Counts(), []
    if stub is not None:
        stub.launches = 0
    reset()
    with _counting(counts, calls):
        step()
    if stub is not None:
        counts.launches = stub.launches
    kernel_ms = _median_ms(functools.partial(_replay, calls), reps, warmup, time.thread_time)
    return ms, kernel_ms, counts


def host_overhead(reps: int = 30, warmup: int = 3, layers: int = LAYERS) -> dict[str, Any]:
    """The first part of the module doc: host ms per call and per layer, counts, and transformers' baseline."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # host work is one thread's: its CPU time is the figure
    try:
        return _host_overhead(reps, warmup, layers)
    finally:
        torch.set_num_threads(threads)


def _host_overhead(reps: int, warmup: int, layers: int) -> dict[str, Any]:
    import transformers

    import fastenc

    config = tiny_bert_config(layers)
    x = _inputs(BATCH, SEQ, [SEQ, SEQ // 2], config.vocab_size)
    torch.manual_seed(0)
    model = fastenc.BertModel(config)
    stub = _Stub()
    records = []
    with fastenc.use_backend("triton"), stub.active():
        for mode in ("forward", "forward+backward"):
            train = mode != "forward"
            model.train(train)
            for layout, unpad in (("padded", False), ("packed", None)):
                ms, kernel_ms, counts = _split(_step(model, x, train, unpad), _reset(model), reps, warmup, stub)
                records.append(HostRecord(layout, mode, round(ms, 3), round(ms / layers, 4), round(kernel_ms, 3),
                                          round((ms - kernel_ms) / layers, 4), counts))
    hf_config = tiny_bert_config(layers)
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config)
    hf_ms, hf_other = {}, {}
    for mode in ("forward", "forward+backward"):
        hf.train(mode != "forward")
        ms, kernel_ms, _ = _split(_step(_Plain(hf), x, mode != "forward", None), _reset(hf), reps, warmup)
        hf_ms[mode], hf_other[mode] = round(ms, 3), round((ms - kernel_ms) / layers, 4)
    gc.collect()
    return {"stub": stub.kind, "layers": layers, "shape": f"{BATCH}x{SEQ}, lengths {SEQ},{SEQ // 2}",
            "hidden": HIDDEN, "threads": torch.get_num_threads(),
            "transformers_sdpa_ms": hf_ms, "transformers_other_per_layer_ms": hf_other,
            "records": [asdict(r) for r in records]}


def cpu_path(reps: int = 5, warmup: int = 1, config: Any = None, shape: tuple[int, int] = CPU_SHAPE,
             min_len: int = CPU_MIN_LEN) -> dict[str, Any]:
    """The second part of the module doc: fastenc's default on CPU tensors against transformers' sdpa model
    (BERT-base unless `config` is given), every row full and rows of lengths min_len..seq."""
    import transformers

    import fastenc

    name = "bert-base" if config is None else "custom"
    config = transformers.BertConfig() if config is None else config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.BertModel(config).eval()
    twin = fastenc.from_hf(hf).eval()
    batch, seq = shape
    g = torch.Generator().manual_seed(1)
    cases = {"fixed": [seq] * batch,
             "padded": torch.randint(min_len, seq + 1, (batch,), generator=g).tolist()}
    out = []
    for case, lengths in cases.items():
        x = _inputs(batch, seq, lengths, config.vocab_size)
        runs = {"transformers": functools.partial(hf, **x), "fastenc": functools.partial(twin, **x)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        ops = {}
        with torch.inference_mode():
            for k, fn in runs.items():
                for _ in range(warmup):
                    fn()
                counts = Counts()
                with _counting(counts):
                    fn()
                ops[k] = counts.torch_kernels
            for i in range(reps):  # alternated, and in turn first: drift and order effects hit both alike
                for k, fn in (runs.items() if i % 2 == 0 else reversed(runs.items())):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        hf_ms, fe_ms = (1e3 * statistics.median(times[k]) for k in runs)
        out.append({"case": case, "lengths": lengths, "transformers_sdpa_ms": round(hf_ms, 2),
                    "fastenc_ms": round(fe_ms, 2), "speedup": round(hf_ms / fe_ms, 3),
                    "transformers_torch_kernels": ops["transformers"], "fastenc_torch_kernels": ops["fastenc"]})
    return {"model": name, "shape": f"{batch}x{seq}", "threads": torch.get_num_threads(), "cases": out}


def render(doc: dict[str, Any]) -> str:
    """Markdown tables of a host run."""
    h = doc["host"]
    base = h["transformers_sdpa_ms"]
    lines = [f"{doc.get('machine', '')}; torch {doc.get('torch', '')}, triton {doc.get('triton', '')}, "
             f"transformers {doc.get('transformers', '')}", "",
             f"Host time with every Triton launch stubbed ({h['stub']} stub), {h['layers']}-layer BERT, hidden "
             f"{h['hidden']}, batch {h['shape']}, {h['threads']} thread(s), CPU time of the calling thread; "
             f"transformers' sdpa model on the CPU, compute included: forward {base['forward']} ms, forward+backward "
             f"{base['forward+backward']} ms. Torch kernels: the aten ops that would be GPU kernels (not views or "
             f"allocations), their own CPU time here (replayed alone); other: everything else (Python, torch's "
             f"dispatch and autograd, fastenc's op calls, transformers' module calls).", "",
             "| layout | mode | host ms | ms / layer | / transformers same mode | torch kernels ms | other ms / layer "
             "| other, transformers | Triton launches | torch kernels | syncs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    other = h.get("transformers_other_per_layer_ms", {})
    for r in h["records"]:
        c = r["counts"]
        syncs = f"{c['syncs']} ({', '.join(c['sync_ops'])})" if c["syncs"] else "0"
        lines.append(f"| {r['layout']} | {r['mode']} | {r['host_ms']} | {r['per_layer_ms']} | "
                     f"{r['host_ms'] / base[r['mode']]:.2f} | {r.get('torch_kernel_ms', '-')} | "
                     f"{r.get('other_per_layer_ms', '-')} | {other.get(r['mode'], '-')} | {c['launches']} | "
                     f"{c['torch_kernels']} | {syncs} |")
    cpu = doc.get("cpu")
    if cpu:
        lines += ["", f"CPU path, {cpu['model']} {cpu['shape']}, inference, {cpu['threads']} threads:", "",
                  "| case | transformers sdpa ms | fastenc ms | speed-up | torch kernels (transformers / fastenc) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['case']} | {c['transformers_sdpa_ms']} | {c['fastenc_ms']} | {c['speedup']}x | "
                  f"{c['transformers_torch_kernels']} / {c['fastenc_torch_kernels']} |" for c in cpu["cases"]]
    return "\n".join(lines)


def run_host(cpu: bool = True, reps: int = 30) -> dict[str, Any]:
    """Both parts of the module doc, with the machine and versions."""
    import os
    import platform

    import transformers
    import triton

    doc: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
                           "triton": triton.__version__, "transformers": transformers.__version__,
                           "host": host_overhead(reps=reps)}
    if cpu:
        doc["cpu"] = cpu_path()
    return doc


def main(out: Path, cpu: bool = True, reps: int = 30) -> int:
    """`fastenc bench --host`: run, print the tables, write host.json and host.md into `out`."""
    reason = stub_unavailable_reason()
    if reason:
        print(f"fastenc bench --host: {reason}", file=sys.stderr)
        return 2
    doc = run_host(cpu, reps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host.json").write_text(json.dumps(doc, indent=1))
    text = render(doc)
    (out / "host.md").write_text(text + "\n")
    print(text)
    print(f"fastenc bench --host: wrote {out / 'host.json'}, {out / 'host.md'}")
    return 0
