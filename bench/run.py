"""`make bench`: run every performance benchmark in turn; each writes bench-results/<name>.json and .md.

    python bench/run.py [extract cutouts train score cluster export ...]
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("extract", "cutouts", "table", "train", "decode", "score", "cluster", "export")


def main(argv=None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    sys.path[:0] = [str(HERE), str(HERE.parent / "lib")]
    failed = []
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"{name}_bench")
        sys.argv = [f"{name}_bench.py"]  # each bench parses its own defaults
        code = module.main()
        print(f"=== bench {name}: {'ok' if not code else f'exit {code}'} in {time.monotonic() - started:.0f} s ===")
        if code:
            failed.append(name)
    results = HERE.parent / "bench-results"
    print("\nResults:", *sorted(str(p.relative_to(HERE.parent)) for p in results.glob("*.md")), sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
