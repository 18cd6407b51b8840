"""The bars and lines of ``medir ingest --queue`` (and of a PACS ingest through the queue)
while the jobs run: drawn here from the runner's progress events.

The runner reports how its jobs stand (:meth:`runner.base.Runner.watch`, one
:class:`runner.base.JobsUpdate` per look) and draws nothing, so the library needs no terminal;
this module turns the updates into an overall bar with the slices per second, one bar per
volume being embedded, one line per finished volume, the "no worker" hint and the summary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from medir.terminal import safe_text
from runner import JobState, JobsUpdate, Runner

NO_WORKER_HINT = ("[yellow]no worker answers: start one with `medir worker` (the jobs wait in "
                  "the queue)[/]")


class JobsProgress:
    """Draws the updates of one watch of ``n_jobs`` jobs; a context manager around it."""

    def __init__(self, console: Console, n_jobs: int) -> None:
        self.console = console
        self.n_jobs = n_jobs
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            console=console, transient=False)
        self.overall = self.bar.add_task("volumes", total=n_jobs, info="")
        self.rows: dict[str, TaskID] = {}
        self.reported: set[str] = set()  # finished jobs already shown
        self.t0 = time.monotonic()
        self.first_start: float | None = None
        self.slices_done = 0  # slices embedded by finished volumes (indexed, not skipped)
        self.succeeded = 0
        self.warned = False

    def __enter__(self) -> JobsProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, exc, tb)

    def update(self, update: JobsUpdate) -> None:
        """Draw one look at the jobs."""
        running = 0
        for j in update.jobs:
            if j.id in self.reported:
                continue
            if j.state == "PROGRESS":
                self.first_start = self.first_start or time.monotonic()
                if j.id not in self.rows:
                    self.rows[j.id] = self.bar.add_task(f"  {safe_text(j.name[:40])}",
                                                        total=j.total or 1, info="")
                self.bar.update(self.rows[j.id], completed=j.done, total=j.total or 1)
                running += j.done
            elif j.state == "STARTED":
                self.first_start = self.first_start or time.monotonic()
            elif j.finished:
                self._finished(j)
        elapsed = time.monotonic() - (self.first_start or self.t0)
        rate = ((self.slices_done + running) / elapsed
                if self.first_start and elapsed > 0 else 0.0)
        self.bar.update(self.overall, info=f"{rate:.1f} slices/s")
        if update.no_worker and not self.warned:
            self.warned = True
            self.bar.console.print(NO_WORKER_HINT)

    def _finished(self, j: JobState) -> None:
        self.reported.add(j.id)
        if j.state == "SUCCESS":
            self.succeeded += 1
            r = j.result
            if r.get("status") == "indexed":
                self.slices_done += int(r.get("n_slices", 0))
            self.bar.console.print(f"{safe_text(r.get('status', 'done')):8s} "
                                   f"{safe_text(j.name)} ({r.get('n_slices', 0)} slices, "
                                   f"{float(r.get('task_seconds', 0)):.1f} s)",
                                   highlight=False)
        else:
            self.bar.console.print(f"[red]failed[/]   {safe_text(j.name)}: "
                                   f"{safe_text(j.error)}", highlight=False)
        if j.id in self.rows:
            self.bar.remove_task(self.rows.pop(j.id))
        self.bar.advance(self.overall)

    def summary(self) -> None:
        """The closing lines: volumes done, slices embedded and their rate, failures."""
        now = time.monotonic()
        failed = self.n_jobs - self.succeeded
        rate = self.slices_done / max(now - (self.first_start or self.t0), 1e-9)
        self.console.print(f"{self.succeeded} of {self.n_jobs} volume(s) done in "
                           f"{now - self.t0:.1f} s, {self.slices_done} slices embedded "
                           f"({rate:.1f} slices/s)", highlight=False)
        if failed:
            self.console.print(f"[red]{failed} volume(s) failed[/], the others were indexed")


def follow_jobs(runner: Runner, ids: Sequence[str], console: Console) -> bool:
    """Show the progress of the jobs ``ids`` until all finished; True when every one
    succeeded."""
    with JobsProgress(console, len(ids)) as view:
        ok = runner.watch(ids, view.update)
    view.summary()
    return ok
