"""Writers for one run: results.json (everything), results.md (readable tables), speedup plots (PNG), and the
terminal summary. All of them read the JSON document that `runner.run` returns, so a recorded JSON can be rendered
again later (`fastenc bench --render results.json`).

matplotlib is optional: without it the PNGs are skipped with a message; the JSON and Markdown never need it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fastenc.autotune import length_bucket
from fastenc.bench import cases as C
from fastenc.bench.runner import CPU_NOTE, MODEL_BASELINES, OP_BASELINES

Doc = dict[str, Any]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        mag = math.floor(math.log10(abs(x)))
        return f"{x:.{max(0, digits - 1 - mag)}f}" if -3 <= mag < 7 else f"{x:.{digits - 1}e}"
    return str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _speedup(r: dict[str, Any], base: str) -> str:
    s = r.get("speedup", {}).get(base)
    return "-" if s is None else f"{s:.2f}x"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ok(doc: Doc, kind: str) -> list[dict[str, Any]]:
    return [r for r in doc["records"] if r["kind"] == kind and r["status"] == "ok"]


def write_json(doc: Doc, path: Path) -> Path:
    path.write_text(json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n")
    return path


def markdown(doc: Doc) -> str:
    m, roofs = doc["meta"], doc["roofs"]
    parts = [
        "# fastenc benchmark",
        "",
        f"- device: **{m['device']}** (CUDA {m['cuda'] or '-'})",
        f"- torch {m['torch']}, triton {m['triton'] or '-'}, transformers {m['transformers'] or '-'}, "
        f"fastenc {m['fastenc']}, python {m['python']}",
        f"- commit `{m['git_commit'] or 'unknown'}`, date {m['date']}",
        f"- roofs measured in this run: matmul {_fmt(roofs['matmul_tflops'])} TFLOP/s ({roofs['matmul_dtype']}), "
        f"copy {_fmt(roofs['copy_gbps'])} GB/s",
        "- latency: median over many runs (CUDA events after warm-up on the GPU); tokens/s counts real tokens only; "
        "TFLOP/s counts matmul FLOPs of the useful work (no padding); MFU = TFLOP/s / matmul roof; "
        "speedup = baseline latency / this latency; max diff = largest |fastenc - transformers| of the last hidden "
        "state over real tokens; sparse MLM = the MLM head ran on the labelled positions only (same loss)",
    ]
    if m["device_type"] != "cuda":
        parts += ["", f"> **CPU demo**: this run checks the pipeline, not speed. The {CPU_NOTE}."]
    models = _ok(doc, "model")
    if models:
        header = ["model", "dtype", "shape", "mode", "variant", "ms", "tokens/s", "TFLOP/s", "MFU", "peak MiB",
                  *(f"vs {b}" for b in MODEL_BASELINES), "max diff"]
        rows = [[r["name"], r["dtype"], r["shape"], r["mode"],
                 r["variant"] + " (sparse MLM)" * bool(r.get("sparse_mlm")),
                 _fmt(r["ms"]), _fmt(r["tokens_per_s"]), _fmt(r.get("tflops")), _pct(r.get("mfu")),
                 _fmt(r.get("peak_mem_mib")), *(_speedup(r, b) for b in MODEL_BASELINES),
                 _fmt(r.get("max_abs_diff"), 2)] for r in models]
        parts += ["", "## Models", "", _table(header, rows)]
    ops = _ok(doc, "op")
    if ops:
        header = ["op", "dtype", "shape", "mode", "variant", "ms", "GB/s", "of copy", "TFLOP/s", "MFU",
                  *(f"vs {b}" for b in OP_BASELINES)]
        rows = [[r["name"], r["dtype"], r["shape"], r["mode"], r["variant"], _fmt(r["ms"]), _fmt(r.get("gbps")),
                 _pct(r.get("bw_frac")), _fmt(r.get("tflops")), _pct(r.get("mfu")),
                 *(_speedup(r, b) for b in OP_BASELINES)] for r in ops]
        dims = doc["settings"]["op_dims"]
        parts += ["", f"## Ops (hidden {dims['hidden']}, {dims['heads']} heads, intermediate {dims['inter']})", "",
                  _table(header, rows)]
    missing = [r for r in doc["records"] if r["status"] != "ok"]
    if missing:
        # one line per (variant, reason) keeps the table readable when a backend is missing everywhere
        seen: dict[tuple[str, str, str], list[str]] = {}
        for r in missing:
            seen.setdefault((r["variant"], r["status"], r.get("reason", "")), []).append(
                f"{r['name']} {r['dtype']} {r['shape']} {r['mode']}")
        rows = [[v, s, reason.replace("|", "/").replace("\n", " "),
                 f"{len(where)} ({where[0]}{', ...' if len(where) > 1 else ''})"]
                for (v, s, reason), where in seen.items()]
        parts += ["", "## Not measured", "", _table(["variant", "status", "reason", "cases"], rows)]
    if doc["summary"].get("interrupted"):
        parts += ["", "The run was interrupted: the tables hold the cases measured before."]
    if doc["summary"].get("over_budget"):
        parts += ["", f"Time budget spent: {len(doc['summary']['over_budget'])} cases not run."]
    return "\n".join(parts) + "\n"


def write_markdown(doc: Doc, path: Path) -> Path:
    path.write_text(markdown(doc))
    return path


def write_plots(doc: Doc, out: Path, log: Callable[[str], None] = print) -> list[Path]:
    """One PNG per model (and one for the ops) of the speedups by shape, a panel per dtype; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("fastenc bench: matplotlib is not installed, no PNG plots (pip install matplotlib)")
        return []
    paths = []
    for kind, bases in (("model", MODEL_BASELINES), ("op", OP_BASELINES)):
        recs = [r for r in _ok(doc, kind) if r["variant"] not in bases and r.get("speedup")]
        for name in dict.fromkeys(r["name"] for r in recs):
            mine = [r for r in recs if r["name"] == name]
            dtypes = list(dict.fromkeys(r["dtype"] for r in mine))
            fig, axes = plt.subplots(1, len(dtypes), figsize=(1 + 5 * len(dtypes), 4), squeeze=False)
            for ax, dtype in zip(axes[0], dtypes, strict=True):
                rows = [r for r in mine if r["dtype"] == dtype]
                cases = list(dict.fromkeys(f"{r['shape']}\n{r['mode']}" for r in rows))
                series = list(dict.fromkeys((r["variant"], b) for r in rows for b in r["speedup"]))
                width = 0.8 / len(series)
                for i, (variant, base) in enumerate(series):
                    ys = [next((r["speedup"].get(base, math.nan) for r in rows if r["variant"] == variant
                                and f"{r['shape']}\n{r['mode']}" == c), math.nan) for c in cases]
                    ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(cases))], ys, width,
                           label=f"{variant} vs {base}")
                ax.axhline(1.0, color="black", linewidth=0.8)
                ax.set_xticks(range(len(cases)), cases, fontsize=8)
                ax.set_title(f"{name} {dtype}")
                ax.set_ylabel("speedup (x)")
                ax.legend(fontsize=7)
            fig.suptitle(f"fastenc speedup on {doc['meta']['device']}", fontsize=10)
            fig.tight_layout()
            path = out / f"speedup_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def failed_everywhere(doc: Doc) -> list[str]:
    """fastenc's variants (not the baselines) that ran in no case: every one of their records is an error. One line
    each, with the first error."""
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in doc["records"]:
        if r["variant"] not in (*MODEL_BASELINES, *OP_BASELINES):
            records.setdefault((r["kind"], r["variant"]), []).append(r)
    return [f"{kind} variant {variant!r} failed in all {len(recs)} cases (first: {recs[0].get('reason')})"
            for (kind, variant), recs in records.items() if all(r["status"] == "error" for r in recs)]


def summary(doc: Doc) -> str:
    """The terminal table: one row per case, each variant's latency, and the best fastenc speedup per baseline."""
    lines = []
    for kind, bases in (("model", MODEL_BASELINES), ("op", OP_BASELINES)):
        recs = [r for r in doc["records"] if r["kind"] == kind]
        if not recs:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in recs))
        cases: dict[tuple, dict[str, dict[str, Any]]] = {}
        for r in recs:
            cases.setdefault((r["name"], r["dtype"], r["shape"], r["mode"]), {})[r["variant"]] = r
        header = [kind, "dtype", "shape", "mode", *(f"{v} ms" for v in variants),
                  *(f"best vs {b}" for b in bases if b in variants)]
        rows = []
        for key, by_variant in cases.items():
            ms = [_fmt(by_variant[v]["ms"]) if v in by_variant and by_variant[v]["status"] == "ok" else "-"
                  for v in variants]
            best = []
            for b in bases:
                if b not in variants:
                    continue
                sp = [r["speedup"][b] for v, r in by_variant.items() if v not in bases and b in r.get("speedup", {})]
                best.append(f"{max(sp):.2f}x" if sp else "-")
            rows.append([*key, *ms, *best])
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
        lines.append("")
    if doc["meta"]["device_type"] != "cuda":
        lines.append(f"CPU demo: this checks the pipeline, not speed; the {CPU_NOTE}.")
    return "\n".join(lines)


def write_all(doc: Doc, out: Path, log: Callable[[str], None] = print) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(doc, out / "results.json"), write_markdown(doc, out / "results.md")]
    return paths + write_plots(doc, out, log)


def table_from_results(doc: dict[str, Any]) -> dict[str, Any]:
    """An auto table (the format of auto_table.json) from a `fastenc bench` results document: for every op case,
    the backends measured side by side, fastest first (the "eager" baseline is backend "torch"), timed forward +
    backward where the run did so, else forward. Its one run is named from the device, date and commit."""
    meta, dims = doc["meta"], doc["settings"]["op_dims"]
    device = meta.get("capability") or meta["device_type"]
    run = f"{device}-{meta['date'][:10]}-{(meta.get('git_commit') or 'nocommit')[:12]}"
    groups: dict[tuple, dict[str, dict[str, float]]] = {}
    for r in doc["records"]:
        if r["kind"] != "op" or r["status"] != "ok" or r["variant"] == "compile":
            continue
        groups.setdefault((r["name"], r["dtype"], r["shape"], r["batch"], r["seq"]), {}).setdefault(
            r["mode"], {})["torch" if r["variant"] == "eager" else r["variant"]] = r["ms"]
    entries = []
    for (name, dtype, _, batch, seq), modes in sorted(groups.items()):
        op = C.public_op(name)
        match: dict[str, Any] = {"op": op, "device": device, "dtype": str(C.DTYPES[dtype]).removeprefix("torch.")}
        if op == "attention":
            match.update(head_dim=dims["hidden"] // dims["heads"], layout="packed" if name != op else "padded",
                         dropout=False, bucket=length_bucket(seq))
        else:
            match.update(hidden=dims["inter"] if op in ("bias_gelu", "gated_act") else dims["hidden"], layout="rows",
                         dropout=False, bucket=length_bucket(batch * seq))
        ms = modes.get("fwd+bwd") or modes["fwd"]
        entries.append({"match": match, "order": sorted(ms, key=ms.__getitem__), "source": run, "ms": ms,
                         "mode": "fwd+bwd" if "fwd+bwd" in modes else "fwd"})
    runs = {run: {k: meta.get(k) for k in ("device", "torch", "triton", "cuda", "git_commit", "date")}}
    return {"format": 1, "note": "recorded by fastenc bench; merge its entries and run into fastenc/auto_table.json",
            "runs": runs, "entries": entries}
