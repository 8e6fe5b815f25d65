"""`fastenc precompile --report FILE`: compile the attention kernels for a target (padded and packed, with and
without dropout, every config the autotuner keeps) through the stand-in driver and read every binary as the GPU
would run it (fastenc.precompile.binaries): the rows, the markdown table, and the problems the rules refuse
(C7515, HMMA on sm_90a, spills).

Trade-off: a static judgement of the binaries (no GPU needed), not a timing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fastenc.precompile.driver import KernelUse, target, target_driver


def compile_attention(target_name: str, dtype: str, head_dim: int, dropout: bool, packed: bool, seqlen: int,
                      heads: int = 2, report: bool = False) -> list[KernelUse]:
    """Compile, for `target_name`, every attention kernel (and every config its autotuner keeps) that a forward and
    backward call of this variant runs (padded layout with a key mask, or packed); return what each binary uses."""
    from fastenc.bench import cases as C
    from fastenc.kernels import attention as A

    tgt = target(target_name)
    if dtype not in C.DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(C.DTYPES)}, got {dtype!r}")
    if not 0 < head_dim <= A.MAX_HEAD_DIM or seqlen < 1:
        raise ValueError(f"head_dim must be in 1..{A.MAX_HEAD_DIM} and seqlen positive, got {head_dim}, {seqlen}")
    g = torch.Generator().manual_seed(0)
    lens = [seqlen, max(1, seqlen // 2)]
    shape = (sum(lens), heads, head_dim) if packed else (len(lens), seqlen, heads, head_dim)
    q, k, v, do = (torch.randn(shape, generator=g).to(C.DTYPES[dtype]) for _ in range(4))
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32) if packed else None
    mask = None if packed else torch.arange(seqlen)[None, :] < torch.tensor(lens)[:, None]
    p = 0.1 if dropout else 0.0
    seed = torch.tensor([1], dtype=torch.int64) if dropout else None
    with target_driver(tgt, report) as fake:
        o, lse = A.attention_fwd(q, k, v, mask, cu, seqlen, head_dim**-0.5, p, seed)
        A.attention_bwd(do, q, k, v, o, lse, mask, cu, seqlen, head_dim**-0.5, p, seed)
    return list(fake.kernels.values())


# The attention variants of `--report`: (layout, dropout); padded = right-padded with a key padding mask.
REPORT_CASES = (("padded", False), ("padded", True), ("packed", False), ("packed", True))
_REPORT_COLUMNS = ("kernel", "layout", "dropout", "dtype", "d", "config", "regs", "spill B", "shared B", "SASS",
                   "HGMMA", "HMMA", "UTMALDG", "C7515", "loop", "norm")


def attention_report(target_name: str, dtypes: Sequence[str] = ("fp16",), head_dims: Sequence[int] = (64,),
                     seqlen: int = 512, cases: Sequence[tuple[str, bool]] = REPORT_CASES) -> list[dict]:
    """One row per attention binary (every config the autotuner keeps) of each variant: what `--report` writes."""
    rows = []
    for dtype in dtypes:
        for d in head_dims:
            for layout, dropout in cases:
                for k in compile_attention(target_name, dtype, d, dropout, layout == "packed", seqlen, report=True):
                    st = k.sass or {}
                    rows.append(dict(kernel=k.name, layout=layout, dropout=dropout, dtype=dtype, d=d, config=k.config,
                                     regs=k.regs, spill_bytes=k.spill_bytes, shared=k.shared, target=target_name,
                                     seqlen=seqlen, **st))
    return rows


def report_problems(rows: Sequence[dict]) -> list[str]:
    """What the issue-33 rules refuse in `rows`: C7515 (serialised wgmma), HMMA on sm_90a, spills."""
    out = []
    for r in rows:
        what = f"{r['target']} {r['kernel']} {r['layout']} dropout={r['dropout']} {r['dtype']} d{r['d']} {r['config']}"
        if r.get("c7515"):
            out.append(f"{what}: ptxas serialised its wgmma (C7515)")
        if r["target"].startswith("sm_90") and r.get("hmma"):
            out.append(f"{what}: {r['hmma']} HMMA (mma.sync) instead of wgmma")
        if r["spill_bytes"] > 0 and r["dtype"] != "fp32":
            out.append(f"{what}: spills {r['spill_bytes']} B/thread")
    return out


def report_markdown(rows: Sequence[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(_REPORT_COLUMNS) + " |", "|" + "---|" * len(_REPORT_COLUMNS)]
    for r in rows:
        vals = (r["kernel"].removeprefix("_attention_").removesuffix("_kernel"), r["layout"],
                "yes" if r["dropout"] else "no", r["dtype"], r["d"], r["config"], r["regs"], r["spill_bytes"],
                r["shared"], r.get("instructions", "-"), r.get("hgmma", "-"), r.get("hmma", "-"),
                r.get("utmaldg", "-"), ("**yes**" if r.get("c7515") else "no") if "c7515" in r else "-",
                r.get("loop_instructions", "-"), r.get("loop_norm", "-"))
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def report_header(target_name: str) -> str:
    import triton

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    return (f"fastenc attention binaries for {target_name}: triton {triton.__version__}, Python "
            f"{sys.version_info.major}.{sys.version_info.minor}, commit {commit}, {time.strftime('%Y-%m-%d')}. "
            "norm = warp-instructions of the main loop per 1024 scores.")
