"""Running a function in a fresh ``spawn`` child process.

One config's allocations then never leak into the next one's memory peak, and a crash
or an out-of-memory kill becomes an error the caller can record instead of a dead sweep.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from typing import Any


class IsolatedRunError(RuntimeError):
    """A function run in a child process failed, crashed, was killed or timed out."""


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    try:
        result = fn(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - everything must reach the parent
        where = traceback.extract_tb(error.__traceback__)[-1:]
        location = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
        conn.send(("error", f"{type(error).__name__}: {error}{location}"))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Runs ``fn(*args, **kwargs)`` in a fresh ``spawn`` child process and returns its result.

    ``fn``, the arguments and the result must be picklable (``fn`` a module-level
    function). Ctrl-C in the parent ends the child and propagates.

    Raises:
        IsolatedRunError: ``fn`` raised (the message names the exception), the child
            died (a signal such as SIGKILL, usually the out-of-memory killer), or it ran
            past ``timeout_s``.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "run_isolated was called while a spawned child process was importing the main "
            "module; guard the calling code with `if __name__ == '__main__':`"
        )
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, fn, args, kwargs), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise IsolatedRunError(f"child process timed out after {timeout_s:g} s")
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join(10)
            code = process.exitcode
            if code is not None and code < 0:
                name = signal.Signals(-code).name
                hint = ", most likely out of memory" if -code == signal.SIGKILL else ""
                raise IsolatedRunError(f"child process killed by {name}{hint}") from None
            raise IsolatedRunError(
                f"child process exited with code {code} without a result (if this runs from a "
                "script, guard the calling code with `if __name__ == '__main__':` -- spawned "
                "children re-import the main module)"
            ) from None
        process.join(10)
        if status != "ok":
            raise IsolatedRunError(payload)
        return payload
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
