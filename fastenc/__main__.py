"""`python -m fastenc <command>` and the `fastenc` console script. Commands: bench, precompile (see --help of each)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = ("bench", "precompile")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: fastenc {{{','.join(COMMANDS)}}} [options]\n"
              "  bench       time fastenc against eager PyTorch, transformers, torch.compile (fastenc bench --help)\n"
              "  precompile  fill Triton's cache for a GPU target without a GPU (fastenc precompile --help)")
        return 0 if argv else 2
    if argv[0] == "bench":
        from fastenc.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv[0] == "precompile":
        from fastenc.precompile import main as precompile_main

        return precompile_main(argv[1:])
    print(f"fastenc: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
