"""`python -m segflow`: the CLI, as the pipeline's training processes run it (`segflow.train_process`).

A training process ends without the interpreter's teardown: once `segflow train` has returned,
every file it wrote is closed and renamed into place, and what is left is Python's final garbage
collection of TensorFlow's graphs and functions, 2.4-2.8 s per process in the demo (ICNet: the
last line printed 2.76 s before the process ended; `gc.collect()` alone 1.0 s). Its output is
flushed first. A training that failed, and every other command (the demo and its temporary
Prefect server among them), exit normally.
"""

import os
import sys

from segflow.cli import cli


def main() -> None:
    try:
        cli()
    except SystemExit as done:
        # Only a training that ended well: after an error, the normal teardown still flushes
        # what was left open (a TensorBoard writer that `fit` did not close when it raised).
        if sys.argv[1:2] != ["train"] or done.code not in (0, None):
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
