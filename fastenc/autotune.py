"""How backend "auto" ranks the backends that can run a call, and the record of what it chose and why.

A call's key is (op, device, dtype, head dim, hidden size, layout, dropout, bucket): device is "cpu" or the CUDA
capability as "sm_90", bucket the next power of two of the sequence length (attention) or of the row count (row
ops). The ranking of a key comes from the first source that knows it:
  1. "tuned": an on-device timing of every supported candidate on the call's own inputs, taken once per key when
     tuning is on (`fastenc.tune(model, inputs)`, `tuning()`, or FASTENC_TUNE=1) and cached on disk
     (FASTENC_TUNE_CACHE, default ~/.cache/fastenc/tune.json); the fastest measured backend wins, so auto is never
     slower than the best candidate it measured.
  2. "table": fastenc/auto_table.json, shipped in the package: entries recorded by benchmark runs, each naming its
     source run; a key field an entry leaves out matches anything, and the most specific entry wins.
  3. "default": the preference kept from before any measurement: cuda > triton > sdpa > torch on CUDA tensors,
     sdpa > torch elsewhere, except attention on CUDA tensors: sdpa first (see DEFAULT_OP_ORDER). No GPU run is in
     the table yet, so on GPUs this is what decides until one is recorded.
The candidates are fastenc.backends.auto_candidates (its registry keeps the Triton interpreter and the CUDA backend
from auto for CPU tensors).

While torch.compile or torch.export traces, nothing is timed and nothing is recorded: the ranking is read once per
traced call site and baked into the graph. A size the graph holds as a symbol (dynamic shapes, export Dims) enters
the key as ANY, which fits every recorded value (the most specific entry wins, then the one of the largest bucket:
the longest sequences dominate a step's time), so the choice never guards on a batch or sequence length.

Every new (key, choice) is logged on the "fastenc" logger at INFO and kept for `explain()`, with each backend's
reasons and the timings when there are some.

Trade-off: a key is coarser than a call (alignment, an attn_bias are not in it), so the ranking is looked up per key
but the reasons are still checked per call; tuning costs a few timed calls per new key, once, and is opt-in because
it runs every candidate (and its first-call compilation) inside the caller's step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import operator
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fastenc import backends
from fastenc.timing import time_calls

log = logging.getLogger("fastenc")

KEY_FIELDS = ("op", "device", "dtype", "head_dim", "hidden", "layout", "dropout", "bucket")
ANY = "any"  # a key field that is symbolic while torch.compile traces: it fits every recorded value
# the registry's order; off CUDA, the backends auto considers on every device
DEFAULT_ORDER = {"cuda": backends.BACKENDS,
                 "other": tuple(b.name for b in backends.REGISTRY if b.auto_devices is None)}
# Where the default must not prefer a kernel estimated slower than torch's own: (op, "cuda") -> (order, why). Until a
# GPU run is recorded, attention on CUDA tensors ranks torch's fused attention first.
DEFAULT_OP_ORDER = {
    ("attention", "cuda"): (("sdpa", "cuda", "triton", "torch"),
                            "sdpa first until a GPU run is recorded: torch's FlashAttention-2 / cuDNN, varlen_attn for "
                            "the packed layout; fastenc's CUDA attention was estimated at 0.5-0.7x FlashAttention-2's "
                            "forward from its SASS"),
}
TABLE_PATH = Path(__file__).with_name("auto_table.json")
_TUNED = "tuned on this device"

Timer = Callable[[str, Callable[[], Any], torch.device], float]  # (backend, call, device) -> milliseconds

_device_names: dict[tuple[str, int | None], str] = {}
_rankings: dict[tuple, tuple[tuple[str, ...], str, dict[str, float]]] = {}
_decisions: dict[tuple, dict[str, Any]] = {}
_table: list[dict[str, Any]] | None = None
_tuned: dict[str, dict[str, float]] | None = None
_tune_state: dict[str, Any] = {"on": None, "timer": None}
_notes: dict[str, str] = {}  # topic -> why a path is off (a block left to transformers, a missing internal)


def length_bucket(n: int) -> int:
    """The bucket a key holds for a length: the next power of two."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = _device_names.get(("cuda", index))
    if name is None:
        major, minor = torch.cuda.get_device_capability(index)
        name = _device_names[("cuda", index)] = f"sm_{major}{minor}"
    return name


def _key(op: str, device: torch.device, dtype: torch.dtype, head_dim: int | str | None, hidden: int | str | None,
         layout: str, dropout: bool, length: int | str) -> tuple:
    return (op, _device_name(device), str(dtype).removeprefix("torch."), head_dim, hidden, layout, dropout,
            ANY if length == ANY else length_bucket(length))


def key_of(call: backends.Call) -> tuple:
    """The key auto ranks by, in KEY_FIELDS order."""
    return _key(call.op, call.device, call.dtype, call.head_dim, call.hidden, call.layout, call.dropout, call.length)


def _key_str(key: tuple) -> str:
    return "|".join(f"{f}={v}" for f, v in zip(KEY_FIELDS, key, strict=True))


# ---------------------------------------------------------------------------------------------------------------
# Sources of a ranking.


def load_table(path: Path | str = TABLE_PATH) -> list[dict[str, Any]]:
    """The entries of a table file; each has "match" (a subset of KEY_FIELDS), "order" and "source"."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != 1:
        raise ValueError(f"{path}: unknown auto table format {data.get('format')!r} (expected 1)")
    runs = data.get("runs", {})
    for entry in data["entries"]:
        unknown = set(entry["match"]) - set(KEY_FIELDS)
        if unknown or entry.get("source") not in runs:
            raise ValueError(f"{path}: entry {entry} has unknown fields {sorted(unknown)} or no named source run")
    return data["entries"]


def set_table(entries: list[dict[str, Any]] | None) -> None:
    """Replace the table auto reads (None: the shipped one); forgets the rankings derived so far."""
    global _table
    _table = entries
    _rankings.clear()


def _matches(fields: dict[str, Any], match: dict[str, Any]) -> bool:
    """Whether recorded key fields `match` fit `fields`; a field that is ANY in `fields` fits any recorded value."""
    return all(fields[f] == ANY or fields[f] == v for f, v in match.items())


def _specificity(fields: dict[str, Any], match: dict[str, Any]) -> tuple[int, int]:
    """How well a matching entry fits: the fields it names that `fields` knows, then (for a traced call whose length
    is ANY) the entry's bucket: the longest sequences dominate the time of a step."""
    return sum(fields[f] != ANY for f in match), match.get("bucket") or 0


def _table_entry(key: tuple) -> dict[str, Any] | None:
    global _table
    if _table is None:
        _table = load_table()
    fields = dict(zip(KEY_FIELDS, key, strict=True))
    best, best_rank = None, (-1, -1)
    for entry in _table:
        match = entry["match"]
        if _matches(fields, match) and (rank := _specificity(fields, match)) > best_rank:
            best, best_rank = entry, rank
    return best


def _cache_path() -> Path:
    return Path(os.environ.get("FASTENC_TUNE_CACHE", Path.home() / ".cache" / "fastenc" / "tune.json"))


def _tuned_entries() -> dict[str, dict[str, float]]:
    global _tuned
    if _tuned is None:
        _tuned = {}
        path = _cache_path()
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if data.get("torch") == torch.__version__:  # timings of another torch may not hold
                _tuned = dict(data["entries"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a bad cache must not stop a model
            log.warning("fastenc: ignoring the tuning cache %s (%s)", path, e)
    return _tuned


def _save_tuned() -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"torch": torch.__version__, "entries": _tuned}, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        log.warning("fastenc: cannot write the tuning cache %s (%s); timings stay in memory only", path, e)


def tuning_on() -> bool:
    on = _tune_state["on"]
    return os.environ.get("FASTENC_TUNE", "0") == "1" if on is None else on


@contextlib.contextmanager
def tuning(timer: Timer | None = None) -> Iterator[None]:
    """Time the candidates of every auto call whose key has no timing yet (the results are cached on disk).
    `timer(backend, fn, device) -> milliseconds` replaces the default (median of fastenc.timing)."""
    saved = dict(_tune_state)
    _tune_state.update(on=True, timer=timer)
    try:
        yield
    finally:
        _tune_state.update(saved)


def forget_tuning() -> None:
    """Drop the timings in memory, the rankings derived from them and the record of choices (the disk cache
    stays: it is read again at the next auto call)."""
    global _tuned
    _tuned = None
    _rankings.clear()
    _decisions.clear()


def _default_timer(backend: str, fn: Callable[[], Any], device: torch.device) -> float:
    return time_calls([fn], device, warmup_ms=10.0, rep_ms=50.0, min_runs=3).median_ms


def _timed_call(call: backends.Call, run: Callable[[str], Any], name: str) -> Callable[[], Any]:
    """One forward with backend `name`, plus its backward when the call builds a graph (torch.autograd.grad into the
    call's own inputs, so no .grad of the caller is touched)."""
    inputs = [t for t in call.present() if t.requires_grad] if torch.is_grad_enabled() else []

    def fn() -> Any:
        out = run(name)
        if inputs and out.requires_grad:
            torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
        return out

    return fn


def _measure(call: backends.Call, run: Callable[[str], Any], names: Iterable[str]) -> dict[str, float]:
    timer = _tune_state["timer"] or _default_timer
    device = call.device
    out = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for name in names:
            try:
                out[name] = float(timer(name, _timed_call(call, run, name), device))
            except Exception as e:  # a candidate that fails here is not a candidate; explain() shows why
                log.warning("fastenc: tuning %s with backend %r failed: %s", call.op, name, e)
                out[name] = math.inf
    return out


def _capturing(call: backends.Call) -> bool:
    """A CUDA graph is being captured: nothing may be timed (or synchronised) now."""
    return call.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _ranking(call: backends.Call, key: tuple, run: Callable[[str], Any] | None,
             supported: list[str]) -> tuple[tuple[str, ...], str, dict[str, float]]:
    """The ranking of `key`, computed once per key (again only when tuning is on and the key has no timing)."""
    measure = run is not None and tuning_on() and len(supported) > 1 and not _capturing(call)
    cached = _rankings.get(key)
    if cached is not None and not (measure and cached[1] != _TUNED):
        return cached
    ks = _key_str(key)
    tuned = _tuned_entries().get(ks) if ANY not in key else _tuned_fitting(key)
    if tuned is None and measure:
        tuned = _measure(call, run, supported)
        _tuned_entries()[ks] = tuned
        _save_tuned()
        for stale in [k for k in _rankings if ANY in k]:  # traced keys read the timings of every bucket
            del _rankings[stale]
    if tuned:
        result = tuple(sorted(tuned, key=tuned.__getitem__)), _TUNED, tuned
    elif (entry := _table_entry(key)) is not None:
        result = tuple(entry["order"]), f"table (run {entry['source']})", dict(entry.get("ms", {}))
    else:
        device = "cuda" if key[1].startswith("sm_") else "other"
        order, why = DEFAULT_OP_ORDER.get((key[0], device), (DEFAULT_ORDER[device], ""))
        result = order, "default preference (no run" + (f"; {why})" if why else ")"), {}
    _rankings[key] = result
    return result


def _tuned_fitting(key: tuple) -> dict[str, float] | None:
    """The timings tuned for a key with ANY fields: of the fitting tuned key with the largest bucket."""
    want = _key_str(key).split("|")
    best, best_bucket = None, -1
    for ks, ms in _tuned_entries().items():
        got = ks.split("|")
        if len(got) == len(want) and all(w.endswith(f"={ANY}") or g == w for g, w in zip(got, want, strict=True)):
            bucket = int(got[-1].partition("=")[2])
            if bucket > best_bucket:
                best, best_bucket = ms, bucket
    return best


def _traced_order(fields: tuple, names: tuple[str, ...]) -> tuple[str, ...]:
    """The ranking of a traced call (`_key`'s arguments, ANY for a symbolic size) restricted to `names`, without
    timing: what torch.compile bakes into a graph."""
    order, _, ms = _ranking(None, _key(*fields), None, [])
    return tuple(n for n in order if n in names and ms.get(n, 0.0) != math.inf)


# reads files and module state: torch.compile runs it once per distinct arguments at trace time and keeps the result
# (see backends); its arguments must be Python constants, hence ANY in place of a symbolic size
setattr(_traced_order, backends._DYNAMO_CONSTANT_FLAG, True)


def _known(size: int | None) -> int | str | None:
    """A size as a Python constant while torch.compile traces: its value when the graph holds it as one, else ANY
    (dynamo presents a symbolic size as an int to isinstance, so it is asked with has_static_value)."""
    from torch.fx.experimental.symbolic_shapes import has_static_value  # not at import: ~1 s; tracing loaded it

    if size is None:
        return None
    return operator.index(size) if has_static_value(size) else ANY  # index(): a constant, where int() stays symbolic


def pick(call: backends.Call, run: Callable[[str], Any] | None = None) -> str:
    """Backend "auto": the best-ranked backend that supports the call (the reference when no other does).

    While torch.compile traces, the ranking is read without timing, and a size that is symbolic (dynamic shapes,
    torch.export's Dims) is ANY: the choice then depends only on what the graph is specialised on anyway (device,
    dtype, head dim, hidden size, layout, dropout, features), so it adds no guard on a batch or sequence length and
    no recompilation; a length the graph holds as a constant keeps its bucket."""
    names = backends.auto_candidates(call)
    if torch.compiler.is_compiling():
        # dropout_p may be a symbolic float (dynamo makes a float default argument a graph input under dynamic=True):
        # a branch on it is a guard the compiler keeps (the reasons below branch on it anyway), bool() would not be
        dropout = True if call.dropout else False  # noqa: SIM210
        fields = (call.op, call.device, call.dtype, _known(call.head_dim), _known(call.hidden), call.layout, dropout,
                  _known(call.length))
        for name in _traced_order(fields, names):
            if not backends.not_supported_reasons(name, call):
                return name
        return "torch"
    reasons = {n: backends.not_supported_reasons(n, call) for n in names}
    supported = [n for n in names if not reasons[n]]
    key = key_of(call)
    order, source, ms = _ranking(call, key, run, supported)
    order = tuple(n for n in order if n in names)
    ranked = [n for n in order if n in supported and ms.get(n, 0.0) != math.inf]
    choice = ranked[0] if ranked else "torch"
    _record(key, choice, source, order, ms, reasons)
    return choice


def _record(key: tuple, choice: str, source: str, order: tuple[str, ...], ms: dict[str, float],
            reasons: dict[str, list[str]]) -> None:
    old = _decisions.get(key)
    if old is not None and old["choice"] == choice:
        return
    _decisions[key] = dict(choice=choice, source=source, order=order, ms=ms, reasons=reasons)
    log.info("fastenc: auto runs %s with %r for %s: %s", key[0], choice, _key_str(key), source)


def note(topic: str, text: str) -> None:
    """Record why a path is off (the layers above dispatch report here: a block left to transformers, a missing
    internal name); explain() lists every note first."""
    if _notes.get(topic) != text:
        _notes[topic] = text
        log.info("fastenc: %s: %s", topic, text)


def explain(op: str | None = None) -> str:
    """What auto chose for each key met so far (of `op`, or all), from which source, and why not the others; first,
    every path turned off and why (`note`)."""
    notes = [f"off: {topic}: {text}" for topic, text in _notes.items()] if op is None else []
    if op is None and "fastenc.kernels._launch" in sys.modules:  # triton was loaded: what is slower or off with it
        notes += [f"off: triton: {text}" for text in backends.triton_notes()]
    lines = []
    for key, d in _decisions.items():
        if op is not None and key[0] != op:
            continue
        lines.append(f"{_key_str(key)} -> {d['choice']} ({d['source']}; order {' > '.join(d['order'])})")
        for name, why in d["reasons"].items():
            timing = f" [{d['ms'][name]:.4g} ms]" if name in d["ms"] else ""
            lines.append(f"    {name}: {'; '.join(why) if why else 'supported'}{timing}")
    return "\n".join(notes + (lines or ["no auto choice made yet" + (f" for {op}" if op else "")]))


def tune(model: Callable[..., Any], inputs: Iterable[Any], *, backward: bool = False,
         timer: Timer | None = None) -> str:
    """Run `model` once per example in `inputs` (a dict is passed as keyword arguments, a tuple as positional ones)
    with tuning on, so every auto op call times its candidates on these shapes; with backward=True the sum of the
    first output is also back-propagated (gradients land in .grad: zero them after). Returns `explain()`."""
    with tuning(timer):
        for example in inputs:
            out = model(**example) if isinstance(example, dict) else model(*example)
            if backward:
                first = out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out
                first.float().sum().backward()
    return explain()
