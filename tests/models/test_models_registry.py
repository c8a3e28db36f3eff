"""The registry, the import rule, mixed precision and the complexity count, across models."""

import ast
import doctest
import importlib
import inspect
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import segflow.models
from model_checks import NUM_CLASSES, TINY_SHAPE, TINY_WIDTH, backend_independent, tiny_batch
from segflow.errors import SegflowError
from segflow.models import ARCHITECTURES, LOSS_WEIGHTS, build, inference_model
from segflow.models.complexity import count_macs, gflops, summarize_architectures

MODELS_DIR = Path(segflow.models.__file__).parent
# Only Keras may reach the backend; the rest is the standard library and segflow itself.
ALLOWED_IMPORTS = {"keras", "segflow", "__future__", "dataclasses", "typing", "inspect", "math", "os"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_architectures_are_the_five_models():
    assert list(ARCHITECTURES) == ["unet", "segnet", "icnet", "resnet", "deeplabv3plus"]
    assert set(LOSS_WEIGHTS) <= set(ARCHITECTURES)


def test_every_list_of_architectures_follows_the_registry():
    """The config Literal (CLI choices, the pipeline form), the CLI and infra/scale-out.yaml name
    exactly the registered architectures, in order where order shows."""
    import typing

    import yaml

    from segflow.cli import cli
    from segflow.config import DEFAULT_ARCHITECTURES, Architecture

    registered = list(ARCHITECTURES)
    assert list(typing.get_args(Architecture)) == registered, "add it to Architecture in segflow/config.py"
    assert list(DEFAULT_ARCHITECTURES) == registered
    for command in ("train", "demo"):
        option = next(param for param in cli.commands[command].params if param.name in ("architecture", "architectures"))
        assert list(option.type.choices) == registered, command
    scale_out = yaml.safe_load((Path(__file__).parents[2] / "infra" / "scale-out.yaml").read_text())
    assert list(scale_out["training"]["deployments"]) == registered, "add a deployment to infra/scale-out.yaml"
    assert list(scale_out["single_gpu_host_job_variables"]) == registered


def test_loss_weights_come_from_the_registry():
    assert LOSS_WEIGHTS == {name: entry.loss_weights for name, entry in ARCHITECTURES.items() if len(entry.loss_weights) > 1}
    assert LOSS_WEIGHTS == {"icnet": (1.0, 0.4, 0.16)}
    for name, entry in ARCHITECTURES.items():  # only a model with training-only outputs takes the flag
        assert ("aux_outputs" in inspect.signature(entry.builder).parameters) == entry.has_aux_outputs, name


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.py")), ids=lambda path: path.name)
def test_model_files_import_only_keras(path):
    modules = imported_modules(path)
    assert {module.split(".")[0] for module in modules} <= ALLOWED_IMPORTS, modules
    names = {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
    assert not names & {"tf", "tensorflow", "jax", "torch", "np", "numpy"}


# The model files whose docstrings hold examples (`>>>`), found by reading the source, not doctest.
EXAMPLE_FILES = sorted(path for path in MODELS_DIR.glob("*.py") if ">>>" in path.read_text())


def test_the_models_have_docstring_examples():
    assert {path.stem for path in EXAMPLE_FILES} >= {*ARCHITECTURES, "__init__", "layers"}


@backend_independent
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_docstring_examples_run(path):
    module = importlib.import_module(f"segflow.models.{path.stem}" if path.stem != "__init__" else "segflow.models")
    result = doctest.testmod(module, extraglobs={"keras": keras})
    assert result.attempted >= path.read_text().count(">>>") > 0  # every example ran
    assert result.failed == 0


def test_unknown_architecture_lists_the_valid_ones():
    valid = "unet, segnet, icnet, resnet, deeplabv3plus"
    with pytest.raises(SegflowError, match=f"unknown architecture 'pspnet'; valid: {valid}"):
        build("pspnet")


def test_unknown_option_is_named():
    with pytest.raises(SegflowError, match="unet has no option depth"):
        build("unet", input_shape=TINY_SHAPE, depth=50)


@pytest.mark.parametrize("input_shape", [(100, 128, 3), (64, 128), (64, 120, 3)])
def test_input_size_not_divisible_by_32_is_rejected(input_shape):
    with pytest.raises(SegflowError, match=r"divisible by 32, got \(" + str(input_shape[0])):
        build("unet", input_shape=input_shape)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_builder_accepts_aux_outputs(name):
    options = {"depth": 18} if name == "resnet" else {}
    model = build(name, num_classes=NUM_CLASSES, input_shape=(32, 64, 3), width=TINY_WIDTH, aux_outputs=True, **options)
    assert len(model.outputs) == len(LOSS_WEIGHTS.get(name, (1.0,)))
    assert len(inference_model(model).outputs) == 1


@pytest.fixture
def mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_logits_are_float32_under_mixed_precision(name, mixed_precision):
    options = {"depth": 18} if name == "resnet" else {}
    model = build(name, num_classes=NUM_CLASSES, input_shape=(32, 64, 3), width=TINY_WIDTH, aux_outputs=True, **options)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions[0].compute_dtype == "float16"
    assert [output.dtype for output in model.outputs] == ["float32"] * len(model.outputs)


def test_mixed_precision_model_runs_to_float32_logits(mixed_precision):
    model = build("resnet", num_classes=NUM_CLASSES, input_shape=(32, 64, 3), width=TINY_WIDTH, depth=18)
    logits = model.predict_on_batch(tiny_batch((32, 64, 3))[0])
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_macs_count_every_conv_and_dense_multiply_add():
    inputs = keras.Input((8, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8·16 positions × 3·3·3·4
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(x)  # 4·8 positions × 3·3·4·6
    x = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)  # 4·8 inputs × 2·2·2·6
    x = keras.layers.Dense(5)(x)  # 8·16 positions × 2·5
    model = keras.Model(inputs, x)
    expected = 128 * 108 + 32 * 216 + 32 * 48 + 128 * 10
    assert count_macs(model) == expected
    assert gflops(model) == 2 * expected / 1e9


def test_gflops_grow_with_the_input_area():
    small = build("unet", num_classes=NUM_CLASSES, input_shape=(64, 128, 3), width=TINY_WIDTH)
    large = build("unet", num_classes=NUM_CLASSES, input_shape=(128, 256, 3), width=TINY_WIDTH)
    assert count_macs(large) == 4 * count_macs(small)


def test_cli_prints_every_model_with_params_and_gflops():
    from segflow.cli import cli

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "1024×2048" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == list(ARCHITECTURES)
    assert float(rows["unet"][0]) == pytest.approx(31.0, rel=0.05)  # M params
    assert float(rows["icnet"][1]) < float(rows["deeplabv3plus"][1])  # GFLOPs


def test_summary_keeps_the_dtype_policy(mixed_precision):
    rows = summarize_architectures(input_shape=(64, 128, 3))
    assert [row["name"] for row in rows] == list(ARCHITECTURES)
    assert keras.config.dtype_policy().name == "mixed_float16"
