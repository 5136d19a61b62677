"""Process exit for torchrun entry points (the training template, the DDP tests)."""

import os
import sys


def run_and_exit(main):
    """Runs ``main()`` and ends the process with its exit code, skipping the interpreter's teardown.

    Under torchrun a rank's normal exit sometimes aborts in C++ static destructors ("terminate called without an
    active exception": background threads of gloo / pyarrow still joinable), about one run in four on a 2-core
    machine, which turns a finished job into a failed one. The work is done and its output flushed by then, so
    ``os._exit`` loses nothing. ``main`` may return an exit code or raise ``SystemExit``.
    """
    try:
        code = main()
    except SystemExit as e:
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)  # SystemExit("message"): what the interpreter would have printed
    code = code if isinstance(code, int) else (0 if code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
