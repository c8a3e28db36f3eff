"""make_dataset over real TFRecord shards: batch shapes, evaluation fidelity, seeds, counting."""

import json

import numpy as np
import pytest
import tensorflow as tf

from segflow import input_pipeline
from segflow.cityscapes import IGNORE_LABEL
from segflow.errors import SegflowError
from segflow.records import shard_name
from test_augment import random_example, serialize_example

HEIGHT, WIDTH = 24, 48
NUM_TRAIN, NUM_VAL = 5, 3


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """Two train shards and one val shard of random 24x48 examples; returns (folder, val labels)."""
    folder = tmp_path_factory.mktemp("records")
    val_labels = []
    for split, count, num_shards in (("train", NUM_TRAIN, 2), ("val", NUM_VAL, 1)):
        examples = [random_example(HEIGHT, WIDTH, seed=index + 100 * (split == "val")) for index in range(count)]
        if split == "val":
            val_labels = [label for _, label in examples]
        for shard in range(num_shards):
            with tf.io.TFRecordWriter(str(folder / shard_name(split, shard, num_shards))) as writer:
                for index in range(shard, count, num_shards):
                    writer.write(serialize_example(*examples[index], filename=f"{split}_{index}"))
    return folder, val_labels


def first_batches(dataset, count):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


def test_training_batches_are_cropped_augmented_and_repeat(records_dir):
    folder, _ = records_dir
    dataset = input_pipeline.make_dataset(folder, "train", training=True, batch_size=2, crop_size=(16, 32), seed=1)

    assert dataset.element_spec[0].shape.as_list() == [2, 16, 32, 3]
    assert dataset.element_spec[1].shape.as_list() == [2, 16, 32]
    batches = first_batches(dataset, 6)  # 12 examples from 5: the data repeats
    assert len(batches) == 6
    for images, labels in batches:
        assert images.dtype == np.float32 and images.shape == (2, 16, 32, 3)
        assert labels.dtype == np.int32 and labels.shape == (2, 16, 32)
        assert set(np.unique(labels)) <= {0, 10, 18, IGNORE_LABEL}


def test_training_base_resize_scales_before_cropping(records_dir):
    folder, _ = records_dir
    dataset = input_pipeline.make_dataset(
        folder, "train", training=True, batch_size=2, crop_size=(12, 24), resize=(6, 12), scale_range=(1.0, 1.0)
    )

    _, labels = first_batches(dataset, 1)[0]

    # A 6x12 image in a 12x24 crop: three quarters of every label is padding.
    assert [(label == IGNORE_LABEL).sum() >= 12 * 24 - 6 * 12 for label in labels] == [True, True]


def test_evaluation_yields_every_stored_label_once_at_full_resolution(records_dir):
    folder, val_labels = records_dir
    dataset = input_pipeline.make_dataset(folder, "val", training=False, batch_size=2)

    batches = first_batches(dataset, 10)

    assert [labels.shape for _, labels in batches] == [(2, HEIGHT, WIDTH), (1, HEIGHT, WIDTH)]
    labels = [label for _, batch_labels in batches for label in batch_labels]
    for label, stored in zip(labels, val_labels):
        np.testing.assert_array_equal(label, stored)
    again = first_batches(input_pipeline.make_dataset(folder, "val", training=False, batch_size=2), 10)
    for (images, _), (images_again, _) in zip(batches, again):
        np.testing.assert_array_equal(images, images_again)


def test_evaluation_resize(records_dir):
    folder, _ = records_dir
    dataset = input_pipeline.make_dataset(folder, "val", training=False, batch_size=3, resize=(12, 24))

    images, labels = first_batches(dataset, 1)[0]

    assert images.shape == (3, 12, 24, 3) and labels.shape == (3, 12, 24)


def test_same_seed_gives_identical_batches_other_seed_does_not(records_dir):
    folder, _ = records_dir

    def batches(seed):
        dataset = input_pipeline.make_dataset(folder, "train", training=True, batch_size=2, crop_size=(16, 32), seed=seed)
        return first_batches(dataset, 4)

    first, again, other = batches(3), batches(3), batches(4)

    _assert_same_batches(first, again)
    assert any(not np.array_equal(images, other_images) for (images, _), (other_images, _) in zip(first, other))


@pytest.mark.parametrize("training", [True, False])
def test_datasets_run_without_the_autotuner_whose_iterators_stall_when_deleted(records_dir, training):
    """TF 2.21's tf.data autotuner makes deleting an iterator wait out its current period,
    which doubles up to 60 s: a 30-s-old training iterator took 10.9 s to delete (twice; 0.00 s
    without it) and the demo's trainings stalled up to 62 s when `fit` returned. The stall
    depends on the autotuner's timing (a 25-s-old one did not stall in other runs), so this test
    checks the setting rather than timing a deletion."""
    dataset = input_pipeline.make_dataset(
        records_dir[0], "train" if training else "val", training=training, batch_size=1, crop_size=(16, 32), seed=0
    )
    assert dataset.options().autotune.enabled is False
    assert next(iter(dataset))[0].shape[0] == 1


def test_count_examples_reads_the_shards_or_trusts_the_manifest(records_dir, tmp_path):
    folder, _ = records_dir
    assert input_pipeline.count_examples(folder, "train") == NUM_TRAIN
    assert input_pipeline.count_examples(folder, "val") == NUM_VAL

    for path in folder.glob("*.tfrecord"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": {"num_examples": 2975}}}))
    assert input_pipeline.count_examples(tmp_path, "train") == 2975
    with pytest.raises(SegflowError, match="no longer match manifest.json: split 'val' is not in it"):
        input_pipeline.count_examples(tmp_path, "val")  # shards the manifest does not list are refused, not read


def test_missing_shards_and_missing_arguments_raise_clear_errors(records_dir, tmp_path):
    folder, _ = records_dir
    with pytest.raises(SegflowError, match="no TFRecord shards match .*test-"):
        input_pipeline.make_dataset(folder, "test", training=False, batch_size=1)
    with pytest.raises(SegflowError, match="name the split"):
        input_pipeline.make_dataset(folder, training=False, batch_size=1)
    with pytest.raises(SegflowError, match="crop_size is required"):
        input_pipeline.make_dataset(folder, "train", training=True, batch_size=1)
    with pytest.raises(SegflowError, match="batch_size"):
        input_pipeline.make_dataset(folder, "train", training=False, batch_size=0)


def test_a_glob_pattern_selects_shards(records_dir):
    folder, _ = records_dir
    dataset = input_pipeline.make_dataset(str(folder / "train-00001-*.tfrecord"), training=False, batch_size=8)

    _, labels = first_batches(dataset, 1)[0]

    assert labels.shape[0] == 2  # the second of two train shards holds examples 1 and 3


def test_without_a_seed_each_dataset_draws_fresh_augmentation(records_dir):
    folder, _ = records_dir

    def labels():
        dataset = input_pipeline.make_dataset(folder, "train", training=True, batch_size=2, crop_size=(16, 32), seed=None)
        return np.concatenate([batch_labels for _, batch_labels in first_batches(dataset, 3)])

    assert not np.array_equal(labels(), labels())


# === Decode once ===


def cached_and_standard(folder, count, **settings):
    def batches(cache_decoded):
        dataset = input_pipeline.make_dataset(
            folder, "train", training=True, crop_size=(16, 32), cache_decoded=cache_decoded, **settings
        )
        return first_batches(dataset, count)

    return batches("on"), batches("off")


def test_decode_once_gives_the_standard_first_epoch_then_fresh_augmentation(records_dir):
    folder, _ = records_dir
    # Batches of one example and no shuffle buffer: batch i and i + NUM_TRAIN are the same example.
    cached, standard = cached_and_standard(folder, 2 * NUM_TRAIN, batch_size=1, shuffle_buffer=1, seed=1)

    for (images, labels), (standard_images, standard_labels) in zip(cached[:NUM_TRAIN], standard):
        np.testing.assert_array_equal(images, standard_images)
        np.testing.assert_array_equal(labels, standard_labels)
    for (first_images, _), (second_images, _) in zip(cached[:NUM_TRAIN], cached[NUM_TRAIN:]):
        assert not np.array_equal(first_images, second_images)


def test_decode_once_with_the_same_seed_gives_the_same_stream(records_dir):
    folder, _ = records_dir

    def batches(seed):  # 3 epochs of 5 examples
        dataset = input_pipeline.make_dataset(
            folder, "train", training=True, batch_size=3, crop_size=(16, 32), seed=seed, cache_decoded="on"
        )
        return first_batches(dataset, 5)

    first, again, other = batches(3), batches(3), batches(4)

    _assert_same_batches(first, again)
    assert all(not np.array_equal(images, other_images) for (images, _), (other_images, _) in zip(first, other))


def test_auto_caches_when_the_decoded_images_take_at_most_half_the_memory(records_dir):
    folder, _ = records_dir
    needed = NUM_TRAIN * HEIGHT * WIDTH * (3 + 1)

    assert input_pipeline.decoded_bytes(folder, "train") == needed
    assert input_pipeline.cache_decision("auto", folder, "train", available=2 * needed) == (True, needed, 2 * needed)
    assert input_pipeline.cache_decision("auto", folder, "train", available=2 * needed - 1)[0] is False
    assert input_pipeline.cache_decision("on", folder, "train", available=0)[0] is True
    assert input_pipeline.cache_decision("off", folder, "train")[0] is False
    with pytest.raises(SegflowError, match="cache_decoded must be one of auto, on, off; got 'yes'"):
        input_pipeline.make_dataset(folder, "train", training=True, batch_size=1, crop_size=(16, 32), cache_decoded="yes")


def test_gpu_demand_is_40_percent_of_h100_bf16_over_three_forward_passes():
    # 1 TFLOP forward per image: 0.4 * 989e12 / 3e12 = 131.9 images/s per GPU.
    assert input_pipeline.gpu_demand(1000.0, gpus=1) == pytest.approx(131.87, abs=0.01)
    assert input_pipeline.gpu_demand(1000.0, gpus=8) == pytest.approx(8 * 131.87, abs=0.1)


def test_startup_line_reports_the_cache_and_an_input_bound_run(records_dir):
    import keras

    from segflow.config import TrainConfig

    folder, _ = records_dir
    inputs = keras.Input((16, 32, 3))
    tiny = keras.Model(inputs, keras.layers.Conv2D(19, 1)(inputs))  # ~18 kFLOPs: any CPU is too slow for it
    config = TrainConfig(architecture="unet", image_size=(HEIGHT, WIDTH), crop_size=(16, 32))

    assert input_pipeline.startup_line(config, folder, tiny, gpus=0).startswith(
        "input pipeline: decoded train images kept in memory after the first epoch (0.0 MiB of "
    )
    line = input_pipeline.startup_line(config.model_copy(update={"cache_decoded": "off"}), folder, tiny, gpus=1)
    assert line.startswith("input pipeline: PNGs decoded every epoch (cache_decoded=off); supplies ~")
    assert line.endswith(
        "images/s of unet at 40 % of an H100's bf16 peak: INPUT-BOUND"
        " (--augment-on-device moves colour jitter and normalisation to the GPU, see BENCHMARKS.md)"
    )
    on_device = config.model_copy(update={"cache_decoded": "off", "augment_on_device": True})
    line = input_pipeline.startup_line(on_device, folder, tiny, gpus=1)
    assert line.startswith(
        "input pipeline: PNGs decoded every epoch (cache_decoded=off); colour jitter and normalisation in the"
        " training step (augment_on_device); supplies ~"
    )
    assert line.endswith("images/s of unet at 40 % of an H100's bf16 peak: INPUT-BOUND")



def _assert_same_batches(first, again):
    """Two streams of (images, labels) batches are equal, element for element."""
    for (images, labels), (images_again, labels_again) in zip(first, again, strict=True):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)


def test_augment_on_device_batches_through_the_device_layer_equal_the_cpu_batches(records_dir):
    """Same seed, scale 1 (no resampling, so the uint8 hand-over is exact): a model behind
    `with_device_augment` sees the CPU path's normalised, jittered, padded batches; labels equal."""
    import keras

    from segflow.device_augment import with_device_augment

    folder, _ = records_dir
    settings = dict(training=True, batch_size=3, crop_size=(32, 40), scale_range=(1.0, 1.0), seed=4)
    cpu = first_batches(input_pipeline.make_dataset(folder, "train", **settings), 2)
    device = list(input_pipeline.make_dataset(folder, "train", augment_on_device=True, **settings).take(2))
    identity = keras.Sequential([keras.Input((32, 40, 3)), keras.layers.Identity()])
    model = with_device_augment(identity)
    for (cpu_images, cpu_labels), (inputs, labels) in zip(cpu, device):
        assert inputs["image"].dtype == tf.uint8 and labels.dtype == tf.uint8
        np.testing.assert_array_equal(labels.numpy(), cpu_labels)
        np.testing.assert_allclose(np.asarray(model(inputs)), cpu_images, atol=1e-5, rtol=1e-5)
        padded_rows = np.all(cpu_images == 0, axis=(2, 3))  # 24 real rows in each 32-high crop
        assert list(padded_rows.sum(axis=1)) == [32 - HEIGHT] * 3
