"""One settings model from the UI form to the trainer, and the named recipes.

Introspection: every TrainSettings field appears in the pipeline flow's parameter schema (what
the Prefect UI renders) and as a `segflow train` option, with the field's default in its help.
"""

import re
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from segflow import recipes
from segflow.cli import cli
from segflow.config import PipelineParams, TrainConfig, TrainSettings, demo_params, train_config
from segflow.errors import SegflowError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ARCHITECTURES = ("unet", "segnet", "icnet", "resnet", "deeplabv3plus")


def test_every_training_setting_is_in_the_flows_form():
    from prefect.utilities.callables import parameter_schema

    from segflow_prefect.flows.pipeline import cityscapes_pipeline

    schema = parameter_schema(cityscapes_pipeline).model_dump()
    form = schema["definitions"]["PipelineParams"]["properties"]
    assert form["training"]["$ref"] == "#/definitions/TrainSettings"
    assert form["recipe"]["enum"] == ["none", "cityscapes", "demo"]  # a dropdown
    assert form["overrides"]["propertyNames"]["enum"] == list(ARCHITECTURES)
    fields = schema["definitions"]["TrainSettings"]["properties"]
    assert set(fields) == set(TrainSettings.model_fields) and "architecture" not in fields
    for name, field in TrainSettings.model_fields.items():
        assert fields[name]["description"] == field.description
    # No training setting is re-declared beside the embedded model.
    assert not set(form) & set(TrainSettings.model_fields)


def test_every_training_setting_is_a_train_option_with_its_default_in_the_help():
    options = {option.name: option for option in cli.commands["train"].params if isinstance(option, click.Option)}
    for name, field in TrainSettings.model_fields.items():
        option = options[name]
        assert option.opts[0] == "--" + name.replace("_", "-")
        default = field.default if field.default is not None else "empty"
        if isinstance(default, tuple):
            default = ("x" if isinstance(default[0], int) else " ").join(str(item) for item in default)
        assert option.help.endswith(f"[default: {default}]"), (name, option.help)
        assert field.description in option.help
    assert "--lr" in options["learning_rate"].opts and "--checkpoint-every" in options["checkpoint_every_steps"].opts


def test_train_options_parse_into_the_settings():
    command = cli.commands["train"]
    args = ["--records", "r", "--out", "o", "--arch", "icnet", "--recipe", "cityscapes", "--lr", "0.02",
            "--image-size", "1024x2048", "--scale-range", "0.75", "1.5", "--no-ohem", "--batch-size", "2"]
    values = command.make_context("train", args).params
    for key in ("records", "out", "work_dir", "quiet", "evaluate", "config_file"):  # not training settings
        values.pop(key)
    config = train_config(**values)
    assert (config.learning_rate, config.scale_range, config.ohem, config.batch_size) == (0.02, (0.75, 1.5), False, 2)
    # Not given on the command line: the recipe's values.
    assert (config.crop_size, config.epochs * config.steps_per_epoch, config.weight_decay) == ((832, 832), 80_000, 0.0005)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_cityscapes_recipe_is_valid_and_every_value_has_a_source(architecture):
    entries = recipes.recipe("cityscapes", architecture)
    config = TrainConfig(architecture=architecture, **recipes.settings("cityscapes", architecture))
    assert config.image_size == (1024, 2048) and config.width == 1.0
    for key in ("crop_size", "batch_size", "epochs", "optimizer", "learning_rate", "momentum", "weight_decay",
                "poly_power", "ohem", "backbone_weights"):
        value, source = entries[key]
        assert re.search(r"(MMSeg configs/\S+\.py|TF Model Garden \S+\.py|paper Sec\. \d|segflow: )", source), source
    assert set(recipes.NOTES[architecture]) == {"output_stride", "aux_loss_weights"}


def test_recipe_numbers_of_the_reference_configs():
    """Spot checks against the reference configs' numbers, written out independently."""
    icnet, fcn, dlv3p = (recipes.settings("cityscapes", arch) for arch in ("icnet", "resnet", "deeplabv3plus"))
    assert (icnet["crop_size"], icnet["batch_size"], icnet["learning_rate"], icnet["weight_decay"]) == ((832, 832), 8, 0.01, 5e-4)
    assert (fcn["crop_size"], fcn["epochs"] * fcn["steps_per_epoch"], fcn["backbone_weights"]) == ((512, 1024), 80_000, "imagenet")
    assert dlv3p["steps_per_epoch"] == 2975 // 16 and dlv3p["warmup_steps"] == 5 * (2975 // 16) and dlv3p["batch_size"] == 16
    unet = recipes.settings("cityscapes", "unet")
    assert (unet["batch_size"], unet["epochs"] * unet["steps_per_epoch"], unet["backbone_weights"]) == (16, 160_000, "none")


def test_readme_shows_the_cityscapes_recipe_table():
    table = README.split("<!-- recipes:cityscapes -->\n")[1].split("\n<!-- /recipes:cityscapes -->")[0]
    assert table == recipes.markdown_table("cityscapes")
    result = CliRunner().invoke(cli, ["recipes", "cityscapes", "--markdown"])
    assert result.exit_code == 0 and result.output.strip() == table


def test_recipes_command_prints_every_setting_with_its_source():
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0
    assert "icnet" in result.output and "832x832" in result.output and "icnet_r50-d8-in1k-pre_4xb2-80k" in result.output


def test_the_form_derives_each_architecture_from_training_recipe_and_overrides():
    params = PipelineParams(
        training={"seed": 5, "epochs": 3, "mixed_precision": True},
        overrides={"deeplabv3plus": {"batch_size": 4, "backbone_weights": "s3://bucket/resnet50.h5"}},
    )
    icnet, dlv3p = params.train_config("icnet"), params.train_config("deeplabv3plus")
    assert (icnet.seed, icnet.mixed_precision, icnet.epochs, icnet.crop_size) == (5, True, 80, (832, 832))
    assert (dlv3p.batch_size, dlv3p.backbone_weights, dlv3p.epochs) == (4, "s3://bucket/resnet50.h5", 500)
    assert PipelineParams(recipe="none", training={"epochs": 3}).train_config("unet").epochs == 3
    # A form round trip (what Prefect stores) gives the same configurations.
    again = PipelineParams.model_validate_json(params.model_dump_json())
    assert again.train_config("deeplabv3plus") == dlv3p


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"unet": {"batch_sise": 4}}, "unet: batch_sise"),
        ({"unet": {"backbone_weights": "imagenet"}}, "unet has no ImageNet encoder"),
        ({"resnet": {"crop_size": "2048x2048"}}, "resnet: crop_size"),
    ],
)
def test_bad_overrides_are_refused_naming_the_architecture_and_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        PipelineParams(overrides=overrides)


# What each architecture needs to pass 0.25 val mIoU on the demo's synthetic split, as measured
# (BENCHMARKS.md, "Demo: settings that learn"): learning rate, scale range, optimizer steps.
DEMO_MEASURED = {
    "unet": (3e-3, (0.5, 2.0), 60),
    "segnet": (3e-3, (1.0, 1.0), 160),
    "icnet": (1e-2, (1.0, 1.0), 240),
    "resnet": (1e-2, (1.0, 1.0), 180),
    "deeplabv3plus": (1e-2, (1.0, 1.0), 80),
}


def test_the_demo_gives_each_architecture_the_settings_measured_to_learn():
    params = demo_params()
    assert params.max_parallel_training == 2  # tracing is single-threaded: two at a time keep 2 cores busy
    assert params.recipe == "demo" and params.synthetic_images == (64, 16) and params.synthetic_size == (64, 128)
    for architecture, (learning_rate, scale_range, steps) in DEMO_MEASURED.items():
        config = params.train_config(architecture)
        assert (config.learning_rate, config.scale_range, config.epochs * config.steps_per_epoch) == (
            learning_rate, scale_range, steps), architecture  # fmt: skip
        assert (config.image_size, config.width, config.batch_size, config.optimizer) == ((64, 128), 0.25, 8, "adamw")
        assert (config.warmup_steps, config.batchnorm_momentum) == (10, 0.9)
        assert not config.saved_model  # model.keras only: the SavedModel export traces the model twice more
        assert config.checkpoint_every_steps >= config.steps_per_epoch  # checkpoints at epoch ends only
        # The recipe alone carries them: a form with recipe 'demo' trains the same.
        assert PipelineParams(recipe="demo").train_config(architecture) == config
    assert {row[0] for row in recipes.table_rows("demo")} == {"all", *DEMO_MEASURED} - {"unet"}


def test_demo_params_keywords_replace_the_demo_recipe_for_every_architecture():
    params = demo_params(epochs=1, steps_per_epoch=2, seed=7, architectures=["unet"], overrides={"icnet": {"epochs": 3}})
    assert params.training.seed == 7 and params.training.epochs == 1
    for architecture in DEMO_MEASURED:
        config = params.train_config(architecture)
        assert (config.epochs, config.steps_per_epoch, config.seed) == (3 if architecture == "icnet" else 1, 2, 7)
    assert "seed" not in params.overrides["unet"]  # not a recipe setting: `training` alone carries it
    assert params.train_config("resnet").learning_rate == 1e-2  # what the keywords do not name stays


def test_a_recipe_without_architecture_or_unknown_is_one_error():
    with pytest.raises(SegflowError, match="needs the architecture"):
        train_config(recipe="cityscapes")
    with pytest.raises(SegflowError, match="unknown recipe"):
        train_config(recipe="imagenet", architecture="unet")
    assert typing.get_args(recipes.RecipeName) == ("none", "cityscapes", "demo")


def test_the_deployments_take_their_recipe_from_the_environment(monkeypatch):
    from segflow_prefect.flows.deploy import environment_params

    monkeypatch.delenv("SEGFLOW_DEMO", raising=False)
    monkeypatch.delenv("SEGFLOW_RECIPE", raising=False)
    assert environment_params().recipe == "cityscapes"
    monkeypatch.setenv("SEGFLOW_RECIPE", "none")
    params = environment_params()
    assert params.recipe == "none" and params.train_config("icnet").crop_size is None
    monkeypatch.setenv("SEGFLOW_RECIPE", "fastest")
    with pytest.raises(ValueError, match="recipe"):
        environment_params()
