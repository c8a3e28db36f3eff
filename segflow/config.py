"""Training parameters as one pydantic model: the CLI fills it, the Prefect flow shows it as its
form, and a run saves it in `config.json` so a restarted run can check it is the same run.
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from segflow import uris
from segflow.recipes import RecipeName

Architecture = Literal["unet", "segnet", "icnet", "resnet", "deeplabv3plus"]  # = segflow.models.ARCHITECTURES (tested)
ImageSize = tuple[int, int]


def parse_image_size(text: str) -> ImageSize:
    """`"512x1024"` → `(512, 1024)` (height × width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (int(match[1]), int(match[2])):
        raise ValueError(f"image size must look like HEIGHTxWIDTH, e.g. 512x1024; got {text!r}")
    return int(match[1]), int(match[2])


# Locations, checked when the parameters are read (segflow/uris.py); credentials in a source are hidden.
SourceUri = Annotated[str, AfterValidator(lambda value: uris.check_source(value))]
StoreUri = Annotated[str, AfterValidator(lambda value: uris.check(value, "results_uri"))]
LocalFolder = Annotated[str, AfterValidator(lambda value: uris.check(value, "work_dir", kinds=("local",)))]
# The form a setting with several values takes, for error messages.
_FORMS = {
    "image_size": '[HEIGHT, WIDTH] or "HEIGHTxWIDTH", e.g. [512, 1024]',
    "crop_size": '[HEIGHT, WIDTH] or "HEIGHTxWIDTH", e.g. [512, 1024]',
    "val_image_size": '[HEIGHT, WIDTH] or "HEIGHTxWIDTH", e.g. [256, 512]',
    "synthetic_size": '[HEIGHT, WIDTH] or "HEIGHTxWIDTH", e.g. [128, 256]',
    "scale_range": "[MIN, MAX], e.g. [0.5, 2.0]",
    "synthetic_images": "[TRAIN, VAL] image counts, e.g. [16, 6]",
}


def _no_booleans(cls, value, info: ValidationInfo):
    """true/false is not a number (pydantic would take `"epochs": true` as 1)."""
    if cls.model_fields[info.field_name].annotation is not bool and (
        isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(item, bool) for item in value))
    ):
        raise ValueError(f"{value!r} is a boolean, not a number")
    return value


def _size_from_text(value):
    """Sizes typed as text (CLI, UI form): "512x1024" → (512, 1024), "" → None."""
    if isinstance(value, str):
        return parse_image_size(value) if value.strip() else None
    return value


# Architectures whose paper starts from an ImageNet encoder that keras.applications provides,
# and that encoder: ResNet-50 (He et al. 2016) for ResNet-FCN and DeepLabV3+, and for ICNet as
# MMSeg's ImageNet-initialised ICNet has it (full width; segflow.models.icnet), VGG16 for SegNet
# (SegNet paper Sec. 3: the encoder is VGG16's 13 convolutional layers); U-Net trains from
# scratch (U-Net paper Sec. 3).
BACKBONES: dict[str, str] = {"resnet": "ResNet50", "deeplabv3plus": "ResNet50", "icnet": "ResNet50", "segnet": "VGG16"}


class TrainSettings(BaseModel):
    """Every training setting but the architecture: what `segflow train` options, the pipeline's
    form (`PipelineParams.training`) and the recipes (`segflow.recipes`) set. Adding a field here
    adds it to all three."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(1.0, gt=0, le=4, description="Channel width multiplier (1.0 = the paper's widths).")
    image_size: ImageSize = Field(
        (512, 1024),
        description="HxW the images are resized to; the exported model takes this size, and evaluation "
        "and prediction resize their inputs to it.",
    )
    crop_size: ImageSize | None = Field(
        None, description="HxW of random training crops taken from the resized images; empty = whole images."
    )
    scale_range: tuple[float, float] = Field(
        (0.5, 2.0), description="Training images are scaled by a random factor in (min, max) before cropping."
    )
    val_image_size: ImageSize | None = Field(
        None, description="HxW for the per-epoch validation mIoU (smaller is faster); empty = image_size."
    )
    val_max_examples: int | None = Field(
        None, ge=1, description="Score only this many val images at each epoch end; empty = all."
    )
    batch_size: int = Field(8, ge=1, description="Global batch size (split across GPUs when several are visible).")
    epochs: int = Field(50, ge=1, description="Number of epochs.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimizer steps per epoch; empty = train examples // batch size."
    )
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="SGD with momentum 0.9, or AdamW.")
    learning_rate: float = Field(0.01, gt=0, description="Peak learning rate, reached at the end of warmup.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0, description="Decoupled weight decay.")
    warmup_steps: int = Field(
        200, ge=0, description="Steps of linear warmup from 10 % of the peak rate (at most a fifth of the run)."
    )
    poly_power: float = Field(0.9, gt=0, description="Exponent of the poly decay after warmup.")
    batchnorm_momentum: float | None = Field(
        None, gt=0, lt=1, description="Momentum of the batch-norm moving statistics; empty = Keras' 0.99. "
        "Lower (0.9) suits short runs, whose statistics would otherwise lag the weights.",
    )
    class_weights: bool = Field(
        False, description="Weight the loss by class, 1 / ln(1.02 + frequency), from the manifest's pixel counts."
    )
    ohem: bool = Field(False, description="Online hard example mining: keep only the hard pixels in the loss.")
    ohem_threshold: float = Field(0.7, gt=0, le=1, description="OHEM keeps pixels whose true-class probability is below this.")
    ohem_min_kept: int = Field(100_000, ge=1, description="OHEM keeps at least this many pixels per batch.")
    mixed_precision: bool = Field(False, description="Compute in float16 (keras mixed_float16 policy) with loss scaling.")
    jit: bool = Field(False, description="Compile the train step with XLA (jit_compile).")
    seed: int = Field(0, description="Seed for weights initialisation, shuffling and augmentation.")
    cache_decoded: Literal["auto", "on", "off"] = Field(
        "auto", description="Keep the decoded train images in memory after the first epoch, so later epochs skip "
        "PNG decoding; auto = when they take at most half the available memory (H x W x 4 bytes per image).",
    )
    augment_on_device: bool = Field(
        False, description="Do colour jitter and normalisation in the training step (on the GPU) instead of the "
        "CPU input pipeline, which then sends uint8 crops: more images/s per CPU core and 4x fewer bytes to the "
        "device. Off by default: see BENCHMARKS.md.",
    )
    checkpoint_every_steps: int = Field(
        500, ge=1, description="Save a resumable checkpoint every this many steps (and at each epoch end)."
    )
    saved_model: bool = Field(
        True, description="Also export a TF SavedModel (saved_model/, for TF Serving) beside model.keras; its "
        "export traces the model twice more (seconds to minutes on a CPU).",
    )
    backbone_weights: str = Field(
        "none",
        min_length=1,
        description="Encoder initialisation: 'none' (random), 'imagenet' (keras.applications' download) or "
        "the local path or s3:// URI of a keras.applications weights file (ResNet50 for resnet, "
        "deeplabv3plus and icnet, VGG16 for segnet; needs width 1.0).",
    )

    _sizes_from_text = field_validator("image_size", "crop_size", "val_image_size", mode="before")(_size_from_text)
    _numbers_not_booleans = field_validator("*", mode="before")(classmethod(_no_booleans))

    @field_validator("image_size", "crop_size", "val_image_size")
    @classmethod
    def _positive_size(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError(f"image sizes must be positive; got {value}")
        return value

    @field_validator("scale_range")
    @classmethod
    def _ordered_scales(cls, value):
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"scale_range must satisfy 0 < min <= max; got {value}")
        return value

    @model_validator(mode="after")
    def _crop_fits(self):
        if self.crop_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(f"crop_size {self.crop_size} is larger than image_size {self.image_size}")
        return self

    @property
    def train_size(self) -> ImageSize:
        """The size of the training batches: the crop if there is one, else the whole image."""
        return self.crop_size or self.image_size


class TrainConfig(TrainSettings):
    """Everything that decides what a training run computes (paths are not part of it): the
    training settings plus the architecture."""

    architecture: Architecture = Field(description="Model architecture, a key of segflow.models.ARCHITECTURES.")

    @model_validator(mode="after")
    def _backbone_exists(self):
        if self.backbone_weights == "none":
            return self
        if self.architecture not in BACKBONES:
            raise ValueError(
                f"backbone_weights {self.backbone_weights!r}: {self.architecture} has no ImageNet encoder "
                f"(only {', '.join(BACKBONES)}); use 'none'"
            )
        if self.width != 1.0:
            raise ValueError(f"backbone_weights {self.backbone_weights!r} needs width 1.0, got {self.width}")
        return self


def train_config(config_file: str | os.PathLike | None = None, recipe: str | None = None, **values) -> TrainConfig:
    """A TrainConfig from a recipe's settings for the architecture (`segflow.recipes`), a JSON
    file of settings (e.g. a run's `config.json`) and keyword values, each overriding the one
    before; None means "not given". An invalid value or an unknown recipe raises one
    SegflowError naming the setting and the value (and the file)."""
    from pydantic import ValidationError

    from segflow import recipes
    from segflow.errors import SegflowError

    settings = {}
    if config_file is not None:
        try:
            settings = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as error:
            raise SegflowError(f"cannot read training settings from {config_file}: {error}") from None
        if not isinstance(settings, dict):
            raise SegflowError(f"{config_file} must hold a JSON object of training settings")
    settings.update({key: value for key, value in values.items() if value is not None})
    if recipe is not None:
        if "architecture" not in settings:
            raise SegflowError(f"recipe {recipe!r} needs the architecture (--arch)")
        settings = {**recipes.settings(recipe, settings["architecture"]), **settings}
    try:
        return TrainConfig(**settings)
    except ValidationError as error:
        problems = "; ".join(_describe(problem, settings) for problem in error.errors())
        raise SegflowError(f"invalid training settings: {problems}") from None


def _describe(problem: dict, settings: dict) -> str:
    if not problem["loc"]:  # a rule across settings: its message names them
        return problem["msg"].removeprefix("Value error, ")
    message = problem["msg"].removeprefix("Value error, ")
    setting = problem["loc"][0]
    if len(problem["loc"]) > 1 and setting in _FORMS:  # one item of a pair is wrong or missing
        return f"{setting}: {settings.get(setting)!r} is not valid; expected {_FORMS[setting]}"
    if problem["type"] == "missing":
        return f"{problem['loc'][0]}: required"
    value = problem.get("input")
    return f"{problem['loc'][0]}: {message}" + ("" if str(value) in message else f" (got {value!r})")


# === The pipeline's form ===

DEFAULT_ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)


class PipelineParams(BaseModel):
    """The parameters of one pipeline run; the Prefect UI shows them as a form.

    Defaults are for a real Cityscapes run on one GPU; `demo_params()` shrinks them for a CPU.
    Credentials are never parameters: they come from the environment or Prefect blocks.
    """

    model_config = ConfigDict(extra="forbid")

    architectures: list[Architecture] = Field(
        list(DEFAULT_ARCHITECTURES), min_length=1, description="Architectures to train, each as its own task."
    )
    source: SourceUri = Field(
        "cityscapes",
        description="Where the data comes from: 'cityscapes' (the official site; credentials from "
        "CITYSCAPES_USERNAME/CITYSCAPES_PASSWORD or the 'cityscapes-credentials' Secret block), "
        "'synthetic' (generated Cityscapes-format data), s3://bucket/prefix/ holding the zips, "
        "a local folder, file:// or https:// URL.",
    )
    synthetic_images: tuple[int, int] = Field(
        (16, 6), description="With source 'synthetic': number of train and val images."
    )
    synthetic_size: ImageSize = Field((128, 256), description="With source 'synthetic': HxW of the generated images.")
    recipe: RecipeName = Field(
        "cityscapes",
        description="Per-architecture settings (segflow.recipes; `segflow recipes` lists them with their "
        "sources) that replace those of `training`: 'cityscapes' = each paper's or reference "
        "implementation's Cityscapes schedule, 'demo' = CPU settings that learn the synthetic "
        "scenes in minutes, 'none' = `training` as is.",
    )
    training: TrainSettings = Field(
        default_factory=TrainSettings,
        description="Training settings of every architecture, where the recipe and the overrides do not set them.",
    )
    overrides: dict[Architecture, dict[str, typing.Any]] = Field(
        default_factory=dict,
        description='Per-architecture settings that replace the recipe\'s and `training`\'s, e.g. '
        '{"deeplabv3plus": {"batch_size": 4, "backbone_weights": "s3://bucket/resnet50_notop.h5"}}.',
    )
    max_parallel_training: int = Field(
        1, ge=1, le=16, description="Architectures trained at the same time on this worker (one per GPU)."
    )
    training_deployment: str | None = Field(
        None,
        description="Run each training as this deployment (e.g. 'train-architecture/gpu') on a GPU work pool "
        "instead of in this flow run's worker; needs an s3:// results URI.",
    )
    results_uri: StoreUri = Field(
        "segflow-results", description="Where results are published: a local folder or s3://bucket/prefix."
    )
    work_dir: LocalFolder = Field("segflow-work", description="Local folder for downloads, records and training state.")
    promote_champions: bool = Field(True, description="Move an architecture's champion pointer when its val mIoU improves.")
    keep_checkpoints: bool = Field(
        False,
        description="Publish the training checkpoints (weights with optimizer state) too; by default the "
        "published run holds the exported models, metrics, history, logs, report, config and run record.",
    )

    _sizes_from_text = field_validator("synthetic_size", mode="before")(_size_from_text)
    _numbers_not_booleans = field_validator("*", mode="before")(classmethod(_no_booleans))

    @model_validator(mode="after")
    def _every_architecture_valid(self):
        """Each architecture's settings (training, recipe, overrides) must make a valid TrainConfig."""
        for architecture in dict.fromkeys([*self.architectures, *self.overrides]):
            try:
                self.train_config(architecture)
            except ValidationError as error:
                settings = {**self.training.model_dump(), **self.overrides.get(architecture, {})}
                problems = "; ".join(_describe(problem, settings) for problem in error.errors())
                raise ValueError(f"{architecture}: {problems}") from None
        return self

    def train_config(self, architecture: str) -> TrainConfig:
        """The TrainConfig of one architecture in this run: `training`, then the recipe's
        settings for it, then its overrides (each replacing the one before)."""
        from segflow import recipes

        update = {**recipes.settings(self.recipe, architecture), **self.overrides.get(architecture, {})}
        return TrainConfig.model_validate({**self.training.model_dump(), **update, "architecture": architecture})


def demo_params(**overrides) -> PipelineParams:
    """Settings that train all five architectures on synthetic data in minutes on a CPU until each
    has learnt something (val mIoU ≥ 0.25): recipe 'demo' (segflow.recipes.DEMO, shared, and
    DEMO_ARCHITECTURES, each architecture's learning rate, steps and scaling), its shared settings
    as `training`. Training settings among the keyword `overrides` (e.g. `epochs=1`) apply to
    every architecture: they go into `training` and replace the recipe's values too (as
    `overrides` of each architecture).

    64 train images and 16 val ones: the val mIoU of 4 images moves by several points with the
    seed; that of 16 is steadier, and both splits take seconds to generate and convert."""
    from segflow import recipes

    keywords = {key: overrides.pop(key) for key in overrides.keys() & TrainSettings.model_fields.keys()}
    training = {**recipes.settings("demo", None), **keywords, **overrides.pop("training", {})}
    per_architecture = dict(overrides.pop("overrides", {}))
    for architecture in DEFAULT_ARCHITECTURES:
        replaced = {key: value for key, value in keywords.items() if key in recipes.settings("demo", architecture)}
        if replaced or architecture in per_architecture:
            per_architecture[architecture] = {**replaced, **per_architecture.get(architecture, {})}
    values = dict(source="synthetic", synthetic_images=(64, 16), synthetic_size=(64, 128), recipe="demo",
                  max_parallel_training=2)
    return PipelineParams(**{**values, **overrides, "training": training, "overrides": per_architecture})
