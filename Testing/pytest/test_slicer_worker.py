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


def _until_cancelled(started: threading.Event):
    """A job that says it has started, then checks for cancellation every 5 ms for up to 10 s."""
    def job(ctx):
        started.set()
        for _ in range(2000):
            ctx.check()
            time.sleep(0.005)
        return "never"
    return job


def test_cancel_stops_between_steps():
    started = threading.Event()
    job = _until_cancelled(started)

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


def test_panel_task_drives_the_panel_widgets(monkeypatch):
    """PerfusionSegUtils.task_panel.PanelTask (both panels' task plumbing) against stand-ins of qt and slicer: progress
    reaches the bar, the outcome reaches the panel once with the bar hidden, a user cancel says so, failures are
    shown, and a quiet cancel (scene close) does not touch the status."""
    import importlib
    import types

    timers, errors = [], []

    class Timer:
        def __init__(self):
            self.active = False
            self.timeout = types.SimpleNamespace(connect=lambda slot: setattr(self, "slot", slot))
            timers.append(self)

        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    qt = types.ModuleType("qt")
    qt.QTimer = Timer
    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(errorDisplay=lambda text, detailedText=None: errors.append(text))
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.delitem(sys.modules, "PerfusionSegUtils.task_panel", raising=False)
    task_panel = importlib.import_module("PerfusionSegUtils.task_panel")

    ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(value=-1, visible=False),
                               statusLabel=types.SimpleNamespace(text=""), cancelButton=types.SimpleNamespace(enabled=True))
    finished, changes = [], []
    panel = task_panel.PanelTask(ui, finished.append, lambda: changes.append(1), cancellingText="stopping")
    timer = timers[-1]
    assert timer.slot == panel.poll and timer.interval == 100

    def run_until_finished(limit_s=10.0):
        deadline = time.monotonic() + limit_s
        while not finished and time.monotonic() < deadline:
            timer.slot()
            time.sleep(0.01)

    def job(ctx, n):
        for i in range(n):
            ctx.progress((i + 1) / n, f"step {i + 1}")
        return n

    panel.start(job, 4, status="Running...")
    assert ui.progressBar.visible and ui.statusLabel.text in ("Running...", "") and timer.active
    run_until_finished()
    assert [o.state for o in finished] == ["done"] and finished[0].result == 4 and panel.succeeded(finished[0], "X")
    assert not ui.progressBar.visible and ui.progressBar.value == 100 and not timer.active and not panel.running
    assert changes  # the buttons were updated after polling

    started = threading.Event()
    slow = _until_cancelled(started)

    finished.clear()
    panel.start(slow, status="Running...")
    started.wait(5)
    panel.cancel()
    assert ui.statusLabel.text == "stopping" and ui.cancelButton.enabled is False
    run_until_finished()
    assert finished[0].state == "cancelled" and not panel.succeeded(finished[0], "X")
    assert ui.statusLabel.text == "Cancelled: no nodes were created."

    def broken(ctx):
        raise ValueError("bad slice")

    finished.clear()
    panel.start(broken, status="Running...")
    run_until_finished()
    assert not panel.succeeded(finished[0], "DAUGS")
    assert errors == ["DAUGS failed: bad slice"] and ui.statusLabel.text == "Failed: bad slice"

    finished.clear()
    started.clear()
    ui.statusLabel.text = "as it was"
    panel.start(slow, status="as it was")
    started.wait(5)
    panel.stop()                                   # module cleanup: quiet, and no more polling
    assert ui.statusLabel.text == "as it was" and not timer.active
