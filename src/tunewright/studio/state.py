"""One studio: its home folder, job store, served models, engine and runner, and what the routes
ask of them together (which base models jobs may use, serving a finished job's adapter, a job's
checkpoints).

    <home>/studio.db         jobs, files, events (store.py)
    <home>/files/<sha256>.jsonl
    <home>/runs/<job id>/    an ordinary run folder (config.yaml, adapter/, report.html, job.log)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tunewright.inference.engine import Engine
from tunewright.runs import RunFolder, read_run_config
from tunewright.serve.registry import ModelSet, ServedModel, add_adapter
from tunewright.studio.runner import Runner
from tunewright.studio.settings import StudioSettings
from tunewright.studio.store import JobRecord, Store
from tunewright.train.checkpoint import COMPLETE

log = logging.getLogger(__name__)


@dataclass
class Studio:
    settings: StudioSettings
    store: Store
    models: ModelSet
    engine: Engine
    runner: Runner | None = None

    @classmethod
    def open(cls, settings: StudioSettings, models: ModelSet, engine: Engine) -> Studio:
        """Open (or create) the home folder, serve finished jobs' models, start the runner."""
        home = settings.home_dir
        (home / "files").mkdir(parents=True, exist_ok=True)
        (home / "runs").mkdir(exist_ok=True)
        studio = cls(settings, Store(home / "studio.db"), models, engine)
        for job in studio.store.jobs_with_status("succeeded"):
            studio._serve(job, studio.runs_dir / job.id)
        studio.runner = Runner(
            studio.store, studio.runs_dir, studio._serve, processes=settings.processes
        ).start()
        return studio

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.store.close()

    @property
    def files_dir(self) -> Path:
        return self.settings.home_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.settings.home_dir / "runs"

    def base_names(self) -> list[str]:
        return [m.name for m in self.models.served.values() if m.adapter is None]

    def base_model(self, name: str) -> ServedModel | None:
        """The served base model a job names, or None: jobs fine-tune what this server serves."""
        served = self.models.served.get(name)
        return served if served is not None and served.adapter is None else None

    def _serve(self, job: JobRecord, run_dir: Path) -> str:
        """Serve the job's adapter under its fine-tuned model name; returns the name."""
        name = job.fine_tuned_model or fine_tuned_name(job)
        if name not in self.models.served:
            trained = RunFolder(run_dir).trained()
            system_prompt = read_run_config(run_dir).data.system_prompt
            add_adapter(self.models, self.engine, name, trained.folder, system_prompt)
        return name

    def checkpoints(self, job: JobRecord) -> list[dict]:
        """The job's complete checkpoints on disk, newest first, as OpenAI's checkpoint objects."""
        folder = RunFolder(self.runs_dir / job.id).checkpoints_dir
        found = []
        for path in folder.glob("step-*"):
            if not (path / COMPLETE).is_file() or not path.name[5:].isdigit():
                continue
            step = int(path.name[5:])
            try:
                saved = json.loads((path / "trainer_state.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            metrics = saved.get("metrics", {})
            found.append(
                {
                    "id": f"ftckpt-{job.id[6:]}-{step}",
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int((path / COMPLETE).stat().st_mtime),
                    "fine_tuning_job_id": job.id,
                    "fine_tuned_model_checkpoint": f"{fine_tuned_name(job)}:ckpt-step-{step}",
                    "step_number": step,
                    "metrics": {
                        "step": step,
                        "train_loss": saved.get("data_state", {}).get("train_loss_ema"),
                        "valid_loss": metrics.get("val_loss"),
                    },
                }
            )
        return sorted(found, key=lambda c: -c["step_number"])


def fine_tuned_name(job: JobRecord) -> str:
    """OpenAI's `ft:<base>:<owner>[:<suffix>]:<id>` naming, with this job's id."""
    suffix = f":{job.suffix}" if job.suffix else ""
    return f"ft:{job.model}:tunewright{suffix}:{job.id[6:14]}"
