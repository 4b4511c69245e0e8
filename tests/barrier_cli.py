"""Run `gct-ablate ARGS` once a release file appears: processes that really start together.

usage: python tests/barrier_cli.py READY_FILE RELEASE_FILE ARGS...

The heavy imports are done before the barrier, so that every process reaches the
command's first store access within milliseconds of the others.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    ready, release, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import optuna  # noqa: F401
    import torch  # noqa: F401

    import gct_ablate.study  # noqa: F401
    import gct_ablate.train  # noqa: F401
    from gct_ablate.cli import app

    ready.touch()
    while not release.exists():
        time.sleep(0.001)
    app(args, prog_name="gct-ablate")


if __name__ == "__main__":
    main()
