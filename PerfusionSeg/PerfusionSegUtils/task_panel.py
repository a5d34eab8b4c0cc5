"""A module panel's background task (needs Slicer): start a Lib function on the worker thread, poll its progress from
a Qt timer on the GUI thread, cancel it, and sort its outcome. Both module widgets use it, so the two panels behave
the same way and MRML is touched only on the GUI thread. Composed, not inherited: it is imported in ``setup()``,
when every module of the extension is on ``sys.path``.
"""
import qt
import slicer


class PanelTask:
    """One task at a time for a panel with ``ui.progressBar``, ``ui.statusLabel`` and ``ui.cancelButton``.

    ``onFinished(outcome)`` runs once per task on the GUI thread, after the progress bar is hidden; ``onChange()``
    (the panel's button update) runs after every poll.
    """

    def __init__(self, ui, onFinished, onChange, cancellingText: str = "Cancelling...") -> None:
        self._ui = ui
        self._onFinished = onFinished
        self._onChange = onChange
        self._cancellingText = cancellingText
        self._task = None
        # the worker thread reports through a queue; the GUI thread polls it
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        return self._task is not None and self._task.running

    def start(self, function, *args, status: str) -> None:
        from PerfusionSegLib.background import BackgroundTask

        self._task = BackgroundTask(function, *args).start()
        self._ui.progressBar.value = 0
        self._ui.progressBar.visible = True
        self._ui.statusLabel.text = status
        self._timer.start()

    def cancel(self, announce: bool = True) -> None:
        """The worker stops after its current step. ``announce``: the user asked, so the panel says so; a scene
        close cancels quietly (the result would refer to nodes that are about to disappear)."""
        if self.running:
            self._task.cancel()
            if announce:
                self._ui.statusLabel.text = self._cancellingText
                self._ui.cancelButton.enabled = False

    def stop(self) -> None:
        """Module cleanup: cancel quietly and stop polling."""
        self.cancel(announce=False)
        self._timer.stop()

    def poll(self) -> None:
        if self._task is None:
            self._timer.stop()
            return
        for event in self._task.poll():
            if event[0] == "progress":
                self._ui.progressBar.value = int(round(100 * event[1]))
                self._ui.statusLabel.text = event[2]
            elif event[0] == "finished":
                self._timer.stop()
                self._task = None
                self._ui.progressBar.visible = False
                self._onFinished(event[1])
        self._onChange()

    def succeeded(self, outcome, what: str) -> bool:
        """True when the task finished with a result; otherwise says why (cancelled, or the error) and returns False."""
        if outcome.state == "cancelled":
            self._ui.statusLabel.text = "Cancelled: no nodes were created."
            return False
        if outcome.state == "failed":
            self._ui.statusLabel.text = f"Failed: {outcome.error}"
            slicer.util.errorDisplay(f"{what} failed: {outcome.error}", detailedText=outcome.traceback)
            return False
        return True
