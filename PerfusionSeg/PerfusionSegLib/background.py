"""Run a long numpy/torch job on a worker thread and hand its progress and result to the GUI thread by polling.

Slicer's MRML scene and Qt widgets are not thread-safe, so the worker must only compute: it receives plain arrays and
returns plain results. The GUI thread polls :meth:`BackgroundTask.poll` from a ``qt.QTimer`` (which also gives the
Python worker thread regular chances to hold the GIL) and creates nodes once the task is done. No Qt or Slicer import
here, so the mechanism is tested with pytest outside Slicer.
"""
from __future__ import annotations

import queue
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional


class Cancelled(Exception):
    """Raised inside the worker (by :meth:`TaskContext.check`) when the user pressed Cancel."""


class TaskContext:
    """Given to the job: report progress, and check for cancellation between steps."""

    def __init__(self, messages: "queue.Queue", cancel_event: threading.Event):
        self._messages = messages
        self._cancel = cancel_event

    def progress(self, fraction: float, text: str = "") -> None:
        self._messages.put(("progress", max(0.0, min(1.0, float(fraction))), str(text)))

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")


@dataclass
class TaskOutcome:
    state: str                      # "done" | "failed" | "cancelled"
    result: Any = None
    error: Optional[BaseException] = None
    traceback: str = ""


class BackgroundTask:
    """``job(context, *args, **kwargs)`` runs on a daemon thread; poll() returns progress events and the outcome."""

    def __init__(self, job: Callable, *args, **kwargs):
        self._job, self._args, self._kwargs = job, args, kwargs
        self._messages: "queue.Queue" = queue.Queue()
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.outcome: Optional[TaskOutcome] = None

    def start(self) -> "BackgroundTask":
        if self._thread is not None:
            raise RuntimeError("a BackgroundTask runs once")
        self._thread = threading.Thread(target=self._run, name="PerfusionSegWorker", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        context = TaskContext(self._messages, self._cancel)
        try:
            result = self._job(context, *self._args, **self._kwargs)
            outcome = TaskOutcome("done", result=result)
        except Cancelled as exc:
            outcome = TaskOutcome("cancelled", error=exc)
        except BaseException as exc:  # reported to the GUI thread, which shows it; never lost on the worker
            outcome = TaskOutcome("failed", error=exc, traceback=traceback.format_exc())
        self._messages.put(("finished", outcome))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self.outcome is None

    def poll(self, timeout: float = 0.0) -> list:
        """Pending events: ("progress", fraction, text) tuples, and finally ("finished", TaskOutcome)."""
        events = []
        try:
            item = self._messages.get(timeout=timeout) if timeout > 0 else self._messages.get_nowait()
            while True:
                events.append(item)
                if item[0] == "finished":
                    self.outcome = item[1]
                    self._thread.join()
                    break
                item = self._messages.get_nowait()
        except queue.Empty:
            pass
        return events

    def wait(self, timeout: float = None) -> TaskOutcome:
        """Block until finished (console scripting and tests); progress events are dropped."""
        self._thread.join(timeout)
        while self.outcome is None and not self._thread.is_alive():
            self.poll()
        if self.outcome is None:
            raise TimeoutError("background task still running")
        return self.outcome


class SyncContext:
    """The same interface as TaskContext for running a job on the calling thread (console scripting, self-tests)."""

    def __init__(self, progressCallback: Optional[Callable] = None):
        self._callback = progressCallback
        self._cancel = threading.Event()

    def progress(self, fraction: float, text: str = "") -> None:
        if self._callback is not None:
            self._callback(max(0.0, min(1.0, float(fraction))), str(text))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")
