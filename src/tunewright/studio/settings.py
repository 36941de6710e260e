"""Studio settings: `serve`'s settings (address, key, limits) plus the studio's own; the
`tunewright studio` options are generated from this model, as `serve`'s are."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from tunewright.serve.settings import ServeSettings


def default_home() -> Path:
    """`$XDG_DATA_HOME/tunewright/studio`, i.e. ~/.local/share/tunewright/studio by default."""
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "tunewright" / "studio"


class StudioSettings(ServeSettings):
    home: Path | None = Field(
        None,
        description="Studio folder: studio.db, uploaded files and runs/ (default: the user's data folder).",
    )
    model: str = Field(
        "smollm2-135m",
        description="Base model that jobs fine-tune and the server answers with (a name or folder).",
    )
    max_upload_bytes: int = Field(
        256 << 20, ge=1024, description="Largest uploaded training file, in bytes."
    )

    processes: int = Field(
        1,
        ge=1,
        description="Processes each job trains in (torchrun --nproc_per_node; one per GPU, gloo on CPU).",
    )
    recipes: Path | None = Field(
        None,
        description="Folder of recipes a job may start from (default: the source tree's recipes/).",
    )

    @property
    def recipes_dir(self) -> Path | None:
        if self.recipes is not None:
            return self.recipes.expanduser().resolve()
        shipped = Path(__file__).resolve().parents[3] / "recipes"  # src/tunewright/studio -> repo
        return shipped if shipped.is_dir() else None

    @property
    def home_dir(self) -> Path:
        return (self.home or default_home()).expanduser().resolve()
