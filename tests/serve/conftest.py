import pytest

from tests.export.runs import train_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A trained LoRA run folder, served as an adapter next to its base model."""
    return train_tiny_run(tmp_path_factory.mktemp("serve-run"), tiny_model_dir, "tuned")
