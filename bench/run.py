"""`make bench` (`.venv/bin/python bench/run.py [--quick]`): see bench/harness.py."""

import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    # The repo root for `bench` and `tests.fakebank`; not bench/ itself, whose modules are not top-level.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    from bench.harness import main as run

    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
