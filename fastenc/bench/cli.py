"""`fastenc bench`: the command line of the benchmark suite.

Options left out take the standard suite on a GPU (five models, fp16 and bf16, the six inference shapes, the two
training shapes, the five ops, every available kernel backend against eager PyTorch, transformers and torch.compile)
and a one-minute demo of the same pipeline on the CPU (a tiny BERT, fastenc's reference path against transformers).
Options given explicitly apply on either device.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from fastenc.bench import cases as C
from fastenc.bench import report
from fastenc.bench.runner import Settings, run

QUICK_GPU = dict(models=["bert-base"], shapes=["1x16", "32x128", "var"], train_shapes=["32x128"], dtypes=["fp16"],
                 op_shapes=["32x128"], rep_ms=50.0, warmup_ms=10.0)
QUICK_CPU = dict(shapes=["1x16", "var"], op_modes=["fwd"], rep_ms=20.0, warmup_ms=5.0)


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return [] if items == ["none"] else items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastenc bench",
        description="Time fastenc against eager PyTorch, transformers and torch.compile; write JSON, Markdown and "
                    "PNG results.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv, help=f"comma list of {', '.join(C.MODELS)}; 'none' for no models")
    p.add_argument("--shapes", type=_csv, help=f"inference shapes BxS or 'var' (default {','.join(C.INFER_SHAPES)})")
    p.add_argument("--train-shapes", type=_csv, help=f"training shapes (default {','.join(C.TRAIN_SHAPES)})")
    p.add_argument("--dtypes", type=_csv, help=f"comma list of {', '.join(C.DTYPES)} (default fp16,bf16)")
    p.add_argument("--backends", type=_csv, help="fastenc backends to measure: triton, cuda, sdpa, torch, auto "
                   "(default: triton,cuda,sdpa on a GPU, torch,sdpa on the CPU)")
    p.add_argument("--ops", type=_csv, help=f"ops to measure, or 'none' (default {','.join(C.OPS)})")
    p.add_argument("--op-shapes", type=_csv, help=f"op shapes (default {','.join(C.OP_SHAPES)})")
    p.add_argument("--op-modes", type=_csv, help="fwd and/or fwd+bwd (default both)")
    p.add_argument("--graph-shapes", type=_csv, help="inference shapes at which each fastenc backend is also timed "
                   "through fastenc.cuda_graphs, or 'none' (default 1x16 on a GPU)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the training step (default on)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure torch.compile baselines (default on for GPU, off for the CPU demo)")
    p.add_argument("--quick", action="store_true", help="a short run: BERT-base fp16, three shapes, fewer repeats")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder (default bench-results)")
    p.add_argument("--budget-s", type=float, help="stop starting new cases after this many seconds")
    p.add_argument("--rep-ms", type=float, help="timed milliseconds per variant")
    p.add_argument("--warmup-ms", type=float, help="warm-up milliseconds per variant")
    p.add_argument("--var-batch", type=int, help="batch size of the 'var' shape")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--render", type=Path, metavar="JSON", help="only render an earlier results.json into --out")
    p.add_argument("--host", action="store_true",
                   help="measure the host path instead (fastenc.bench.host): host time per layer with every Triton "
                        "launch stubbed, launches and syncs counted, and the CPU path against transformers")
    p.add_argument("--no-cpu-path", action="store_true", help="with --host: skip the BERT-base CPU comparison")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastenc bench: --device cuda asked for, but torch sees no CUDA device")
    settings = Settings(device=device) if device.type == "cuda" else Settings.cpu_demo_settings(device)
    if args.quick:
        settings = replace(settings, **(QUICK_GPU if device.type == "cuda" else QUICK_CPU))
    given = {
        "models": args.models, "shapes": args.shapes, "train_shapes": args.train_shapes, "dtypes": args.dtypes,
        "backends": args.backends, "ops": args.ops, "op_shapes": args.op_shapes, "op_modes": args.op_modes,
        "train": args.train, "compile": args.compile, "budget_s": args.budget_s, "rep_ms": args.rep_ms,
        "warmup_ms": args.warmup_ms, "var_batch": args.var_batch, "graph_shapes": args.graph_shapes,
    }
    settings = replace(settings, **{k: v for k, v in given.items() if v is not None})
    for name in settings.models:
        if name not in C.MODELS:
            raise SystemExit(f"fastenc bench: unknown model {name!r} in --models; choose from {', '.join(C.MODELS)}")
    for name in settings.ops:
        if name not in C.OPS:
            raise SystemExit(f"fastenc bench: unknown op {name!r} in --ops; choose from {', '.join(C.OPS)}")
    for mode in settings.op_modes:
        if mode not in ("fwd", "fwd+bwd"):
            raise SystemExit(f"fastenc bench: --op-modes takes fwd and fwd+bwd, got {mode!r}")
    for dtype in settings.dtypes:
        if dtype not in C.DTYPES:
            raise SystemExit(f"fastenc bench: unknown dtype {dtype!r} in --dtypes; choose from {', '.join(C.DTYPES)}")
    try:
        for s in (*settings.shapes, *settings.train_shapes, *settings.op_shapes):
            settings.shape(s)
    except ValueError as e:
        raise SystemExit(f"fastenc bench: {e}") from None
    return settings


def _interpreter_on() -> bool:
    from fastenc.kernels._common import interpreter_on  # imports triton: only asked on a GPU

    return interpreter_on()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.host:
        from fastenc.bench.host import main as host_main

        return host_main(args.out, cpu=not args.no_cpu_path)
    if args.render:
        doc = json.loads(args.render.read_text())
    else:
        settings = settings_from(args)
        if settings.device.type == "cuda" and _interpreter_on():
            print("fastenc bench: warning: TRITON_INTERPRET=1 is set, Triton kernels run in the interpreter and "
                  "their timings mean nothing")
        elif settings.device.type != "cuda":
            print("fastenc bench: no CUDA device, running the CPU demo of the pipeline; speed needs a GPU.")
        signal.signal(signal.SIGTERM, _interrupt)  # `timeout` stops the run: the results so far are still written
        doc = run(settings, progress=not args.no_progress and sys.stderr.isatty())
    paths = report.write_all(doc, args.out)
    if any(r["kind"] == "op" and r["status"] == "ok" for r in doc["records"]):  # what auto would learn from this run
        paths.append(args.out / "auto_table.json")
        paths[-1].write_text(json.dumps(report.table_from_results(doc), indent=1))
    failed = report.failed_everywhere(doc)
    for line in failed:
        print(f"fastenc bench: FAILED: {line}")
    print(report.summary(doc))
    print("fastenc bench: wrote " + ", ".join(str(p) for p in paths))
    if failed:
        print(f"fastenc bench: exit status 1: {len(failed)} fastenc variant(s) failed in every case (above)")
    return 1 if failed else 0
