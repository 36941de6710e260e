import pytest

from tests.export.runs import train_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A trained LoRA run folder; tests that export from it write under their own output folders."""
    return train_tiny_run(tmp_path_factory.mktemp("export-run"), tiny_model_dir)
