"""The job runner: a thread of the studio process that takes queued jobs from the store, oldest
first, one at a time, and runs each as `python -m tunewright.cli run <run>/config.yaml`, the
same code as `tunewright run`, in its own process, with its output in `<run>/job.log`. With
`tunewright studio --processes N`, a job trains under torchrun in N processes, then evaluates
in one (`job_commands`).

While a job runs, the runner reads the run's `metrics.jsonl` and turns new rows into events
(step, loss, ETA). Cancelling sends the process group SIGTERM, then SIGKILL after a grace period.
The queue lives in SQLite: a studio that crashed finds its job still `running` when it starts
again, puts it back in the queue, and the job resumes from its newest checkpoint
(`train.resume` is always on for studio jobs).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunewright.runs import RunFolder, read_run_config
from tunewright.studio.store import JobRecord, Store, now

log = logging.getLogger(__name__)
LOG_FILE = "job.log"
TERM_GRACE_S = 5.0  # after SIGTERM, the seconds a job gets to exit before SIGKILL
# `python -m MODULE ARGS` (argv: parent pid, module, args), after asking Linux for a SIGKILL
# when the thread that started it dies: a studio killed with kill -9 leaves no job training on,
# which a restart would then run a second time into the same folder. (The pid check closes the
# race of a parent that died before the request; "-" skips it, for torchrun's workers, whose
# launcher's pid is not known in advance.) torchrun starts each worker in a session of its own,
# out of reach of a signal to the job's process group: this is what stops them when the launcher
# is killed.
_CHILD = (
    "import os, runpy, signal, sys\n"
    "if sys.platform == 'linux':\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "    if sys.argv[1] != '-' and os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit(1)\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _module(parent: str, module: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _CHILD, parent, module, *args]


def job_commands(run_dir: Path, processes: int = 1) -> list[list[str]]:
    """The commands a job runs, in order. One process: `tunewright run`. N processes:
    `tunewright train` under `torchrun --standalone --nproc_per_node N`, then `tunewright
    evaluate` in one process (evaluation is not split over processes), which also writes the
    reports. A recipe with a preference section or scaling fractions, which only `run` chains,
    runs as `tunewright run` in one process."""
    config = str(run_dir / "config.yaml")
    parent = str(os.getpid())
    if processes > 1:
        cfg = read_run_config(run_dir)
        if cfg.preference is None and not cfg.train.scaling_fractions:
            return [
                _module(
                    parent,
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={processes}",
                    "--no-python",
                    *_module("-", "tunewright.cli", "train", config),
                ),
                _module(parent, "tunewright.cli", "evaluate", config),
            ]
    return [_module(parent, "tunewright.cli", "run", config)]


@dataclass
class _Progress:
    """What has been read of a run's metrics.jsonl so far."""

    offset: int = 0
    first: tuple[int, float] | None = None  # (step, time) of the first row this process saw


@dataclass
class Runner:
    """Runs queued jobs one at a time; `on_success(job, run_dir)` returns the served model name."""

    store: Store
    runs_dir: Path
    on_success: Callable[[JobRecord, Path], str]
    processes: int = 1  # each job trains in this many processes (torchrun); see job_commands
    poll_s: float = 0.5
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Runner:
        """Re-queue jobs a crash left running, then start taking jobs."""
        for job in self.store.jobs_with_status("running", "validating_files"):
            self.store.set_status(job.id, "queued")
            self.store.add_event(
                job.id,
                "The studio restarted: the job is queued again and resumes from its last checkpoint",
            )
        self._thread = threading.Thread(target=self._loop, name="tunewright-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the running job (it stays `running`, so the next start resumes it) and the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=TERM_GRACE_S + 10)

    def wake(self) -> None:
        """A job was queued or cancelled: look now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            queued = self.store.jobs_with_status("queued")
            if not queued:
                self._wake.wait(timeout=self.poll_s)
                self._wake.clear()
                continue
            job = queued[0]
            if not self.store.set_status(job.id, "running", only_from=("queued",)):
                continue  # cancelled meanwhile
            try:
                self._run(job)
            except Exception as e:  # keep serving the queue; the job says what went wrong
                log.exception("job %s failed in the runner", job.id)
                self._fail(job.id, f"the studio could not run the job: {type(e).__name__}: {e}")

    def _run(self, job: JobRecord) -> None:
        run_dir = self.runs_dir / job.id
        self.store.add_event(job.id, "Fine-tuning job started")
        metrics = run_dir / "metrics.jsonl"  # rows from before a restart were reported then
        progress = _Progress(offset=metrics.stat().st_size if metrics.is_file() else 0)
        for command in job_commands(run_dir, self.processes):
            returncode = self._follow(job, run_dir, command, progress)
            if returncode is None:
                return  # stopped or cancelled
            if returncode != 0:
                self._fail(job.id, _failure_reason(run_dir / LOG_FILE, returncode))
                return
        self._succeed(job, run_dir)

    def _follow(
        self, job: JobRecord, run_dir: Path, command: list[str], progress: _Progress
    ) -> int | None:
        """Run one of the job's commands to its end, reporting its progress; its exit code, or
        None when the studio stopped (the job stays `running`) or the job was cancelled."""
        with (run_dir / LOG_FILE).open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=run_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own process group: a cancel reaches its children too
            )
        while process.poll() is None:
            if self._stop.is_set():
                _terminate(process)
                return None  # stays "running": the next start re-queues and resumes it
            current = self.store.job(job.id)
            if current is not None and current.cancel_requested:
                _terminate(process)
                self.store.set_status(job.id, "cancelled")
                self.store.add_event(job.id, "The job was cancelled")
                return None
            self._report(job.id, run_dir, progress)
            self._wake.wait(timeout=self.poll_s)
            self._wake.clear()
        self._report(job.id, run_dir, progress)
        return process.returncode

    def _succeed(self, job: JobRecord, run_dir: Path) -> None:
        RunFolder(run_dir).trained()  # raises when the run left no adapter
        for message in _evaluation_events(run_dir):
            self.store.add_event(job.id, message)
        name = self.on_success(job, run_dir)
        training = _read_json(RunFolder(run_dir).training_summary_file) or {}
        self.store.update_job(
            job.id, fine_tuned_model=name, trained_tokens=training.get("trained_tokens")
        )
        self.store.set_status(job.id, "succeeded", only_from=("running",))
        self.store.add_event(job.id, f"New fine-tuned model created: {name}")
        self.store.add_event(job.id, "The job has successfully completed")

    def _fail(self, job_id: str, reason: str) -> None:
        self.store.update_job(
            job_id, error={"code": "training_failed", "message": reason, "param": None}
        )
        self.store.set_status(job_id, "failed", only_from=("running",))
        self.store.add_event(job_id, f"The job failed: {reason}", level="error")

    def _report(self, job_id: str, run_dir: Path, progress: _Progress) -> None:
        """New metrics.jsonl rows as events, and the estimated finish time."""
        path = run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        with path.open("rb") as f:
            f.seek(progress.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a row still being written waits
        progress.offset += len(complete)
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = row.get("step")
            if "train_loss" in row:
                total = row.get("planned_steps")
                if progress.first is None:
                    progress.first = (step, row["time"])
                data = {"step": step, "train_loss": row["train_loss"], "total_steps": total}
                message = f"Step {step}/{total}: training loss={row['train_loss']:.4f}"
                first_step, first_time = progress.first
                if total and step > first_step:
                    seconds_per_step = (row["time"] - first_time) / (step - first_step)
                    eta = round(seconds_per_step * (total - step))
                    self.store.update_job(job_id, estimated_finish=now() + eta)
                    message += f", ETA {eta} s"
                self.store.add_event(job_id, message, type="metrics", data=data)
            elif "val_loss" in row:
                self.store.add_event(
                    job_id,
                    f"Step {step}: validation loss={row['val_loss']:.4f}",
                    type="metrics",
                    data={"step": step, "valid_loss": row["val_loss"]},
                )


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after the grace period."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _failure_reason(log_file: Path, returncode: int) -> str:
    """The log's error line (`error: ...`, as the CLI prints one), else its last lines."""
    lines = [l.strip() for l in _tail(log_file).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:") or "Error:" in l]
    reason = errors[-1] if errors else " / ".join(lines[-3:])
    return f"{reason[:800]} (exit code {returncode}; the whole log is the run's {LOG_FILE})"


def _tail(path: Path, size: int = 8192) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


def _evaluation_events(run_dir: Path) -> list[str]:
    results = _read_json(RunFolder(run_dir).eval_dir / "results.json")
    if not results:
        return []
    messages = []
    headline = results.get("headline")
    for name, model in results.get("models", {}).items():
        metric = model.get("metrics", {}).get(headline)
        if metric is not None:
            messages.append(
                f"Evaluation: {name} {headline} {metric['value']:.3f} "
                f"[{metric.get('low', metric['value']):.3f}, {metric.get('high', metric['value']):.3f}]"
                f" on {results.get('n_examples')} test examples"
            )
    return messages


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
