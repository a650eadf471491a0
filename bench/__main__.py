"""Run every ``bench/*_bench.py`` module's ``main()`` (``make bench``); one failing bench does not stop the rest."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from pathlib import Path


def main() -> int:
    failed = []
    for path in sorted(Path(__file__).resolve().parent.glob("*_bench.py")):
        name = f"bench.{path.stem}"
        print(f"=== {name}", flush=True)
        try:
            module = importlib.import_module(name)
            run = module.main
            run([]) if inspect.signature(run).parameters else run()
        except BaseException:  # a bench's SystemExit must not stop the others
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
