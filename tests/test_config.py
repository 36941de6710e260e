"""Recipes and overrides: typos are errors that name the key path; every shipped recipe is valid."""

from pathlib import Path

import pytest

from tunewright.config import RunConfig, load_config
from tunewright.errors import ConfigError

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate_and_their_data_exists(recipe):
    cfg = load_config(recipe)
    assert cfg.name == recipe.stem
    for name in [*cfg.data.train_files, *cfg.data.test_files]:
        assert cfg.resolve_path(name).is_file(), name
    assert recipe.read_text().startswith("#"), "a recipe starts with a comment giving its command"


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(
        RECIPES[0], ["train.lr=1e-4", "train.lora_target_modules=[q_proj, v_proj]", "name=x"]
    )
    assert (
        cfg.train.lr == 1e-4
        and cfg.train.lora_target_modules == ["q_proj", "v_proj"]
        and cfg.name == "x"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrate=1", "train.lrate: unknown key"),
        ("train.lr=-1", "train.lr: Input should be greater than 0"),
        ("train.method=qlora", "train.method: Input should be 'lora' or 'full'"),
        ("nonsense", "is not of the form section.key=value"),
        ("train.lr.x=1", "'lr' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(RECIPES[0], [override])


def test_missing_recipe_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, RunConfig.__mro__[1]):
                walk(annotation)

    walk(RunConfig)
