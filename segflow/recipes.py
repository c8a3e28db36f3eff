"""Named training recipes: per-architecture settings, each value with where it comes from.

Plain data, no logic beyond lookup. A recipe maps an architecture to `{setting: (value, source)}`
where `setting` is a field of `segflow.config.TrainSettings`. `NOTES` adds, per architecture,
facts of the reference that are not settings (output stride, auxiliary losses) and the places
where segflow departs from it.

Sources (file names in github.com/open-mmlab/mmsegmentation, MMSeg 1.x, and
github.com/tensorflow/models, TF Model Garden):
- MMSeg `_base_/datasets/cityscapes.py`: images resized around 2048×1024 by a random ratio in
  (0.5, 2.0), crop 512×1024, 2 images per GPU.
- MMSeg `_base_/schedules/schedule_80k.py` / `schedule_160k.py`: SGD lr 0.01, momentum 0.9,
  weight decay 0.0005, poly power 0.9 (eta_min 1e-4), 80 000 / 160 000 iterations, no warmup.
- "4xb2" / "4xb4" in a config's name: 4 GPUs × 2 / 4 images, the global batch.
- TF Model Garden `official/vision/configs/semantic_segmentation.py`,
  `seg_deeplabv3plus_cityscapes`: batch 16, crop 512×1024 of 1024×2048, scale 0.5–2.0, SGD
  momentum 0.9, lr 0.01, poly 0.9 over 500 epochs of 2975 // 16 steps, 5 warmup epochs,
  L2 weight decay 1e-4, output stride 16, ImageNet-initialised backbone.

Weight decay: MMSeg and TF Model Garden add an L2 term to the gradient; segflow's optimizer
decays the weights directly (decoupled). With SGD the two differ only through momentum.
"""

from __future__ import annotations

from typing import Any, Literal

RecipeName = Literal["none", "cityscapes", "demo"]

_MMSEG = "MMSeg configs/"
_CITYSCAPES = _MMSEG + "_base_/datasets/cityscapes.py"
_S80K = _MMSEG + "_base_/schedules/schedule_80k.py"
_S160K = _MMSEG + "_base_/schedules/schedule_160k.py"
_ICNET = _MMSEG + "icnet/icnet_r50-d8-in1k-pre_4xb2-80k_cityscapes-832x832.py"
_FCN = _MMSEG + "fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py"
_UNET = _MMSEG + "unet/unet-s5-d16_fcn_4xb4-160k_cityscapes-512x1024.py"
_TFMG = "TF Model Garden official/vision/configs/semantic_segmentation.py seg_deeplabv3plus_cityscapes"



def _mmseg(schedule: str, thousands: int, per_gpu: int, config: str) -> dict[str, tuple[Any, str]]:
    """MMSeg's Cityscapes dataset and an iteration schedule on 4 GPUs × `per_gpu` images."""
    iterations = f"{schedule}: max_iters={thousands}000 = {thousands} epochs × 1000 steps"
    return {
        "image_size": ((1024, 2048), f"{_CITYSCAPES}: RandomResize scale=(2048, 1024)"),
        "scale_range": ((0.5, 2.0), f"{_CITYSCAPES}: ratio_range=(0.5, 2.0)"),
        "batch_size": (4 * per_gpu, f"{config}: batch_size={per_gpu} per GPU × 4 GPUs ('4xb{per_gpu}')"),
        "epochs": (thousands, iterations),
        "steps_per_epoch": (1000, iterations),
        "optimizer": ("sgd", f"{schedule}: type='SGD'"),
        "learning_rate": (0.01, f"{schedule}: lr=0.01"),
        "momentum": (0.9, f"{schedule}: momentum=0.9"),
        "weight_decay": (0.0005, f"{schedule}: weight_decay=0.0005"),
        "poly_power": (0.9, f"{schedule}: PolyLR power=0.9"),
        "warmup_steps": (0, f"{schedule}: no warmup scheduler"),
        "ohem": (False, f"{config}: plain CrossEntropyLoss"),
    }


RECIPES: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {
    "cityscapes": {
        "icnet": {
            **_mmseg(_S80K, 80, 2, _ICNET),
            "crop_size": ((832, 832), f"{_ICNET}: crop_size=(832, 832)"),
            "ohem": (False, f"{_MMSEG}_base_/models/icnet_r50-d8.py: OHEM only as a commented-out ablation"),
            "backbone_weights": ("imagenet", f"{_ICNET}: Pretrained 'open-mmlab://resnet50_v1c' (ImageNet ResNet-50; "
                                             "segflow: keras.applications' ResNet-50, 7×7 stem)"),
        },
        "resnet": {
            **_mmseg(_S80K, 80, 2, _FCN),
            "crop_size": ((512, 1024), f"{_FCN}: crop_size=(512, 1024)"),
            "backbone_weights": ("imagenet", f"{_MMSEG}_base_/models/fcn_r50-d8.py: pretrained='open-mmlab://resnet50_v1c' "
                                             "(ImageNet ResNet-50)"),
        },
        "deeplabv3plus": {
            "image_size": ((1024, 2048), f"{_TFMG}: output_size=[1024, 2048]"),
            "crop_size": ((512, 1024), f"{_TFMG}: crop_size=[512, 1024]"),
            "scale_range": ((0.5, 2.0), f"{_TFMG}: aug_scale_min=0.5, aug_scale_max=2.0"),
            "batch_size": (16, f"{_TFMG}: train_batch_size = 16"),
            "epochs": (500, f"{_TFMG}: train_steps=500 * steps_per_epoch"),
            "steps_per_epoch": (185, f"{_TFMG}: steps_per_epoch = 2975 // 16"),
            "optimizer": ("sgd", f"{_TFMG}: 'sgd'"),
            "learning_rate": (0.01, f"{_TFMG}: initial_learning_rate=0.01"),
            "momentum": (0.9, f"{_TFMG}: momentum=0.9"),
            "weight_decay": (0.0001, f"{_TFMG}: l2_weight_decay=1e-4"),
            "poly_power": (0.9, f"{_TFMG}: polynomial power=0.9"),
            "warmup_steps": (925, f"{_TFMG}: warmup_steps=5 * steps_per_epoch"),
            "batchnorm_momentum": (0.99, f"{_TFMG}: norm_momentum=0.99"),
            "ohem": (False, f"{_TFMG}: plain cross-entropy"),
            "backbone_weights": ("imagenet", f"{_TFMG}: init_checkpoint=deeplab_resnet101_imagenet (segflow: ResNet-50)"),
        },
        "unet": {
            **_mmseg(_S160K, 160, 4, _UNET),
            "crop_size": ((512, 1024), f"{_UNET}: crop_size=(512, 1024)"),
            "backbone_weights": ("none", "U-Net paper Sec. 3: trained from scratch (Gaussian initialisation)"),
        },
        "segnet": {
            # Neither MMSeg nor TF Model Garden has a SegNet config: MMSeg's shared Cityscapes
            # dataset and 80k schedule, with 4 GPUs × 2 images.
            **_mmseg(_S80K, 80, 2, _CITYSCAPES),
            "crop_size": ((512, 1024), f"{_CITYSCAPES}: crop_size=(512, 1024)"),
            "backbone_weights": ("imagenet", "SegNet paper Sec. 3: the encoder is VGG16's 13 convolutional layers "
                                             "(ImageNet VGG16 as in issue 13)"),
        },
    },
}

# Facts of each reference that are not settings, shown with the recipe table.
NOTES: dict[str, dict[str, tuple[str, str]]] = {
    "icnet": {
        "output_stride": ("8 (dilated conv4/conv5)", f"{_MMSEG}_base_/models/icnet_r50-d8.py: dilations=(1, 1, 2, 4)"),
        "aux_loss_weights": ("1.0, 0.4, 0.16", "ICNet paper Sec. 3.3 (segflow.models.LOSS_WEIGHTS)"),
    },
    "resnet": {
        "output_stride": ("8", f"{_MMSEG}_base_/models/fcn_r50-d8.py: strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)"),
        "aux_loss_weights": ("none (MMSeg adds an FCN head on conv4 at 0.4; segflow has none)",
                             f"{_MMSEG}_base_/models/fcn_r50-d8.py"),
    },
    "deeplabv3plus": {
        "output_stride": ("16", f"{_TFMG}: output_stride = 16"),
        "aux_loss_weights": ("none", f"{_TFMG}: one segmentation head"),
    },
    "unet": {
        "output_stride": ("1 (full-resolution decoder)", "U-Net paper Fig. 1"),
        "aux_loss_weights": ("none (MMSeg adds an FCN head at 0.4; segflow has none)", f"{_UNET}"),
    },
    "segnet": {
        "output_stride": ("1 (full-resolution decoder)", "SegNet paper Fig. 2"),
        "aux_loss_weights": ("none", "SegNet paper Sec. 3"),
    },
}

_DEMO_SOURCE = "segflow: CPU demo (64×128 synthetic images, minutes per architecture)"
_DEMO_RUNS = "BENCHMARKS.md, 'Demo: settings that learn': "
# Shared by every architecture in the demo (BENCHMARKS.md: batch 8, width 0.25, AdamW, 10 warmup
# steps and batch-norm momentum 0.9 learn the synthetic scenes in tens of steps).
DEMO: dict[str, tuple[Any, str]] = {
    "image_size": ((64, 128), _DEMO_SOURCE),
    "width": (0.25, _DEMO_RUNS + "width 0.25 learns in tens of steps (0.125: 3-13 % after 16 steps)"),
    "batch_size": (8, _DEMO_RUNS + "batch 8"),
    "optimizer": ("adamw", _DEMO_RUNS + "AdamW"),
    "learning_rate": (3e-3, _DEMO_RUNS + "lr 3e-3"),
    "warmup_steps": (10, _DEMO_RUNS + "10 warmup steps"),
    "batchnorm_momentum": (0.9, _DEMO_RUNS + "0.9: Keras' 0.99 lags the weights of a short run"),
    "epochs": (3, _DEMO_SOURCE + ": one progress line and validation per epoch"),
    "steps_per_epoch": (20, _DEMO_RUNS + "U-Net reaches 0.27 val mIoU after 60 steps"),
    "checkpoint_every_steps": (1000, _DEMO_SOURCE + ": a checkpoint at each epoch end only"),
    "saved_model": (False, _DEMO_SOURCE + ": model.keras only (the SavedModel export traces the model twice more)"),
}
# Per architecture, what it needs to reach 0.25 val mIoU in the demo (BENCHMARKS.md's runs).
DEMO_ARCHITECTURES: dict[str, dict[str, tuple[Any, str]]] = {
    "unet": {},
    "segnet": {
        "scale_range": ((1.0, 1.0), _DEMO_RUNS + "no random scaling learns faster on 64×128 images"),
        "class_weights": (True, "SegNet paper (training): the loss weighted by median frequency class balancing "
                                "(segflow: ENet's 1/ln(1.02 + frequency)); " + _DEMO_RUNS + "0.279 after 160 steps, "
                                "0.239 without"),
        "epochs": (4, _DEMO_RUNS + "SegNet learns slowest (no skip connections): 0.243 after 120 steps"),
        "steps_per_epoch": (40, _DEMO_RUNS + "160 steps"),
    },
    "icnet": {
        "learning_rate": (1e-2, _DEMO_RUNS + "lr 1e-2"),
        "scale_range": ((1.0, 1.0), _DEMO_RUNS + "no random scaling learns faster on 64×128 images"),
        "steps_per_epoch": (80, _DEMO_RUNS + "0.310 after 240 steps (0.286 after 180, 0.275 after 120): "
                                "its steps are the cheapest of the five (0.14 s on one core)"),
    },
    "resnet": {
        "learning_rate": (1e-2, _DEMO_RUNS + "lr 1e-2"),
        "scale_range": ((1.0, 1.0), _DEMO_RUNS + "no random scaling learns faster on 64×128 images"),
        "steps_per_epoch": (60, _DEMO_RUNS + "0.264 after 180 steps"),
    },
    "deeplabv3plus": {
        "learning_rate": (1e-2, _DEMO_RUNS + "lr 1e-2"),
        "scale_range": ((1.0, 1.0), _DEMO_RUNS + "no random scaling learns faster on 64×128 images"),
        "epochs": (2, _DEMO_RUNS + "0.269 after 80 steps (2 × 40), 0.305 after 120: the costliest step of the five"),
        "steps_per_epoch": (40, _DEMO_RUNS + "80 steps"),
    },
}


def recipe(name: str, architecture: str | None) -> dict[str, tuple[Any, str]]:
    """`{setting: (value, source)}` of recipe `name` for `architecture` (`none` is empty; `demo`
    for `architecture` None gives its settings shared by every architecture). Raises
    SegflowError for an unknown name."""
    from segflow.errors import SegflowError

    if name == "none":
        return {}
    if name == "demo":
        return {**DEMO, **DEMO_ARCHITECTURES.get(architecture, {})}
    if name not in RECIPES:
        raise SegflowError(f"unknown recipe {name!r}; valid: none, demo, {', '.join(RECIPES)}")
    if architecture not in RECIPES[name]:
        raise SegflowError(f"recipe {name!r} has no settings for {architecture!r}; it has {', '.join(RECIPES[name])}")
    return dict(RECIPES[name][architecture])


def settings(name: str, architecture: str | None) -> dict[str, Any]:
    """The setting values of `recipe(name, architecture)`, without their sources."""
    return {key: value for key, (value, _) in recipe(name, architecture).items()}


def table_rows(name: str) -> list[tuple[str, str, str, str]]:
    """`(architecture, setting, value, source)` rows of recipe `name`, with the NOTES rows."""
    if name == "demo":
        rows = [("all", key, _text(value), source) for key, (value, source) in DEMO.items()]
        return rows + [(architecture, key, _text(value), source) for architecture, entries in DEMO_ARCHITECTURES.items()
                       for key, (value, source) in entries.items()]  # fmt: skip
    rows = []
    for architecture in RECIPES.get(name, {}):
        entries = {**recipe(name, architecture), **NOTES.get(architecture, {})}
        rows += [(architecture, key, _text(value), source) for key, (value, source) in entries.items()]
    return rows


def markdown_table(name: str) -> str:
    """Recipe `name` as a markdown table (the README shows the `cityscapes` one)."""
    lines = ["| architecture | setting | value | source |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(name)]
    return "\n".join(lines)


def _text(value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(item, int) for item in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    return str(value)
