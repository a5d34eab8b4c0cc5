"""The worker-thread mechanism of the Slicer panels (PerfusionSegLib.background): no Slicer needed."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PerfusionSeg"))
from PerfusionSegLib.background import BackgroundTask, Cancelled, SyncContext  # noqa: E402


def _poll_until_done(task, limit_s=10.0):
    events, deadline = [], time.monotonic() + limit_s
    while task.outcome is None and time.monotonic() < deadline:
        events += task.poll(timeout=0.02)
    return events


def test_result_and_progress_reach_the_polling_thread():
    main = threading.get_ident()
    seen = {}

    def job(ctx, n):
        seen["thread"] = threading.get_ident()
        for i in range(n):
            ctx.check()
            ctx.progress((i + 1) / n, f"step {i + 1}")
        return n * 2

    task = BackgroundTask(job, 5).start()
    events = _poll_until_done(task)
    assert task.outcome.state == "done" and task.outcome.result == 10
    assert seen["thread"] != main  # the job really ran on another thread
    progress = [e for e in events if e[0] == "progress"]
    assert [round(e[1], 2) for e in progress] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert events[-1][0] == "finished" and not task.running


def test_cancel_stops_between_steps():
    started = threading.Event()

    def job(ctx):
        started.set()
        for _ in range(1000):
            ctx.check()
            time.sleep(0.005)
        return "never"

    task = BackgroundTask(job).start()
    started.wait(5)
    task.cancel()
    _poll_until_done(task)
    assert task.outcome.state == "cancelled" and task.outcome.result is None


def test_errors_are_reported_not_lost():
    def job(ctx):
        raise ValueError("bad input, one line")

    task = BackgroundTask(job).start()
    outcome = task.wait(5)
    assert outcome.state == "failed"
    assert isinstance(outcome.error, ValueError) and "bad input" in str(outcome.error)
    assert "ValueError" in outcome.traceback
    with pytest.raises(RuntimeError):
        task.start()  # a task runs once


def test_sync_context_has_the_same_interface():
    calls = []
    ctx = SyncContext(lambda f, text: calls.append((f, text)))
    ctx.progress(1.5, "x")
    assert calls == [(1.0, "x")]
    ctx.check()
    ctx.cancel()
    with pytest.raises(Cancelled):
        ctx.check()
