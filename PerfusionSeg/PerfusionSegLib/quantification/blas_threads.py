"""Run the kinetic fits with single-threaded BLAS.

The fits multiply many small matrices ((N, T) x (T, T), T < 100). Multi-threaded OpenBLAS gains nothing there and,
on a busy 2-core machine, its spinning threads made one product 60x slower (16 ms instead of 0.26 ms, measured).
threadpoolctl does this when installed; otherwise we call the thread setter of the OpenBLAS that numpy loaded.
"""
from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator, List, Tuple

_SETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
            "openblas_get_num_threads")


def _openblas_handles() -> List[Tuple[ctypes.CDLL, str]]:
    found = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return found
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for getter in _SETTERS:
            if hasattr(lib, getter):
                found.append((lib, getter.replace("get_num_threads", "set_num_threads")))
                break
    return found


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Limit BLAS to one thread inside the block, restoring the previous setting afterwards."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    import numpy  # noqa: F401  (make sure numpy's OpenBLAS is loaded before we look for it)

    handles = _openblas_handles()
    previous = []
    for lib, setter in handles:
        getter = getattr(lib, setter.replace("set_num_threads", "get_num_threads"))
        try:
            previous.append((getattr(lib, setter), int(getter())))
            getattr(lib, setter)(1)
        except Exception:  # an unexpected build: leave it alone
            continue
    try:
        yield
    finally:
        for setter, n in previous:
            setter(n)
