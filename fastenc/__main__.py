"""`python -m fastenc <command>` and the `fastenc` console script. Commands: bench (see `fastenc bench --help`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = ("bench",)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: fastenc {{{','.join(COMMANDS)}}} [options]\n  bench  time fastenc against eager PyTorch, "
              "transformers and torch.compile (fastenc bench --help)")
        return 0 if argv else 2
    if argv[0] == "bench":
        from fastenc.bench.cli import main as bench_main

        return bench_main(argv[1:])
    print(f"fastenc: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
