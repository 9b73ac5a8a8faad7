"""Benchmarks, run by hand rather than by pytest: `python -m bench.<name>` (bench/results/)."""

import signal


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM unwind the run like Ctrl-C does.

    A benchmark starts servers, operators and emulators as child processes and stops them in
    `finally` blocks; Python's default SIGTERM action ends the process without running those,
    which would leave the children running (and loading the machine) after a `kill`.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
