"""parse_train / parse_eval on tiny hand-made records: shapes, padding, flips, scaling, seeds."""

import numpy as np
import pytest
import tensorflow as tf

from segflow import augment
from segflow.cityscapes import IGNORE_LABEL
from segflow.errors import SegflowError
from segflow.records import FEATURE_KEYS, decode_example


def make_features(image: np.ndarray, label: np.ndarray) -> dict:
    """The `decode_example` dict of a record holding `image` (uint8 HxWx3) and `label` (uint8 HxW)."""
    return decode_example(serialize_example(image, label))


def serialize_example(image: np.ndarray, label: np.ndarray, filename: str = "x") -> bytes:
    def as_bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def as_int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        FEATURE_KEYS.image: as_bytes(tf.io.encode_png(image).numpy()),
        FEATURE_KEYS.filename: as_bytes(filename.encode()),
        FEATURE_KEYS.image_format: as_bytes(b"png"),
        FEATURE_KEYS.height: as_int(image.shape[0]),
        FEATURE_KEYS.width: as_int(image.shape[1]),
        FEATURE_KEYS.channels: as_int(3),
        FEATURE_KEYS.label: as_bytes(tf.io.encode_png(label[:, :, np.newaxis]).numpy()),
        FEATURE_KEYS.label_format: as_bytes(b"png"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def random_example(height: int, width: int, seed: int = 0, label_values=(0, 10, 18, IGNORE_LABEL)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.choice(np.array(label_values, np.uint8), (height, width))
    return image, label


def normalized(image: np.ndarray) -> np.ndarray:
    return (image / 255.0 - np.array(augment.MEAN_RGB)) / np.array(augment.STDDEV_RGB)


def train(features, crop_size, seed, **kwargs):
    image, label = augment.parse_train(features, crop_size, seed=tf.constant(seed), **kwargs)
    return image.numpy(), label.numpy()


def test_parse_eval_normalises_the_image_and_keeps_the_label():
    image, label = random_example(12, 20)
    features = make_features(image, label)

    out_image, out_label = augment.parse_eval(features)

    assert out_image.dtype == tf.float32 and out_image.shape == (12, 20, 3)
    assert out_label.dtype == tf.int32 and out_label.shape == (12, 20)
    np.testing.assert_allclose(out_image.numpy(), normalized(image), atol=1e-5)
    np.testing.assert_array_equal(out_label.numpy(), label)
    again_image, again_label = augment.parse_eval(features)
    np.testing.assert_array_equal(again_image.numpy(), out_image.numpy())
    np.testing.assert_array_equal(again_label.numpy(), out_label.numpy())


def test_normalisation_uses_imagenet_statistics_and_inverts():
    mean_colour = tf.constant([[list(augment.MEAN_RGB)]])
    np.testing.assert_allclose(augment.normalize_image(mean_colour).numpy(), 0.0, atol=1e-6)
    one_std_up = tf.constant([[[m + s for m, s in zip(augment.MEAN_RGB, augment.STDDEV_RGB)]]])
    np.testing.assert_allclose(augment.normalize_image(one_std_up).numpy(), 1.0, atol=1e-6)
    pixels = tf.random.stateless_uniform((4, 5, 3), seed=(1, 2))
    np.testing.assert_allclose(augment.denormalize_image(augment.normalize_image(pixels)).numpy(), pixels, atol=1e-6)


def test_parse_eval_resize_is_bilinear_for_images_and_nearest_for_labels():
    image, label = random_example(16, 32)

    out_image, out_label = augment.parse_eval(make_features(image, label), resize=(6, 10))

    assert out_image.shape == (6, 10, 3) and out_label.shape == (6, 10)
    expected_image = tf.image.resize(image.astype(np.float32), (6, 10), method="bilinear")
    np.testing.assert_allclose(out_image.numpy(), normalized(expected_image.numpy()), atol=1e-5)
    expected_label = tf.image.resize(label[:, :, np.newaxis], (6, 10), method="nearest")[:, :, 0]
    np.testing.assert_array_equal(out_label.numpy(), expected_label.numpy())


def test_parse_train_gives_crop_sized_float_image_and_int_label():
    features = make_features(*random_example(24, 48))

    image, label = augment.parse_train(features, (16, 32), seed=tf.constant([0, 1]))

    assert image.dtype == tf.float32 and image.shape == (16, 32, 3)
    assert label.dtype == tf.int32 and label.shape == (16, 32)


def test_crop_larger_than_the_image_pads_image_with_zero_and_label_with_ignore():
    image, label = random_example(8, 16, label_values=(1, 2, 3))
    features = make_features(image, label)

    for seed in range(6):
        out_image, out_label = train(features, (20, 40), [seed, 0], scale_range=(1.0, 1.0), photometric=False)
        padding = out_label == IGNORE_LABEL
        assert padding.sum() == 20 * 40 - 8 * 16
        np.testing.assert_array_equal(out_image[padding], 0.0)
        rows, cols = np.nonzero(~padding)
        window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        placed_label, placed_image = out_label[window], out_image[window]
        if not np.array_equal(placed_label, label):  # flipped
            placed_label, placed_image = placed_label[:, ::-1], placed_image[:, ::-1]
        np.testing.assert_array_equal(placed_label, label)
        np.testing.assert_allclose(placed_image, normalized(image), atol=1e-5)


def test_flip_moves_image_and_label_together():
    # Left third road (0), the rest car (13); the image colour encodes the class pixel by pixel.
    label = np.full((10, 30), 13, np.uint8)
    label[:, :10] = 0
    image = np.where(label[:, :, np.newaxis] == 0, [200, 40, 40], [20, 20, 220]).astype(np.uint8)
    features = make_features(image, label)

    flipped = 0
    for seed in range(12):
        out_image, out_label = train(features, (10, 30), [seed, 3], scale_range=(1.0, 1.0), photometric=False)
        is_flipped = bool((out_label[:, -10:] == 0).all())
        assert is_flipped or (out_label[:, :10] == 0).all()
        np.testing.assert_array_equal(out_label, label[:, ::-1] if is_flipped else label)
        np.testing.assert_allclose(out_image, normalized(image[:, ::-1] if is_flipped else image), atol=1e-5)
        flipped += is_flipped
    assert 0 < flipped < 12


def test_random_scale_never_invents_label_values():
    features = make_features(*random_example(24, 48, label_values=(0, 10, 18)))

    values = set()
    for seed in range(10):
        _, label = train(features, (16, 32), [seed, 5])
        values |= set(np.unique(label).tolist())

    assert values <= {0, 10, 18, IGNORE_LABEL}
    assert {0, 10, 18} <= values


@pytest.mark.parametrize("scale", [4 / 3, 2 / 3])
def test_scale_and_crop_equal_resizing_the_whole_image_then_cropping(scale):
    # Scales where no output pixel falls exactly between two source pixels, so nearest is unique.
    image, label = random_example(24, 48, label_values=(0, 1, 2, 3, 4, 5))
    features = make_features(image, label)
    scaled_size = (round(24 * scale), round(48 * scale))
    crop_size = (20, 40)
    reference_image = normalized(tf.image.resize(image.astype(np.float32), scaled_size).numpy())
    reference_label = tf.image.resize(label[:, :, np.newaxis], scaled_size, method="nearest")[:, :, 0].numpy()
    padded_image, padded_label, (pad_y, pad_x) = _pad_for_every_window(reference_image, reference_label, crop_size)

    for seed in range(4):
        out_image, out_label = train(features, crop_size, [seed, 9], scale_range=(scale, scale), photometric=False)
        matches = [
            (y, x, flip)
            for y in range(padded_label.shape[0] - crop_size[0] + 1)
            for x in range(padded_label.shape[1] - crop_size[1] + 1)
            for flip in (False, True)
            if np.array_equal(_window(padded_label, y, x, crop_size, flip), out_label)
            and np.allclose(_window(padded_image, y, x, crop_size, flip), out_image, atol=1e-4)
        ]
        assert len(matches) == 1
        y, x, _ = matches[0]
        # The window overlaps the scaled image as much as it can (no needless padding).
        assert pad_y - y <= max(crop_size[0] - scaled_size[0], 0) and y <= pad_y + max(scaled_size[0] - crop_size[0], 0)
        assert pad_x - x <= max(crop_size[1] - scaled_size[1], 0) and x <= pad_x + max(scaled_size[1] - crop_size[1], 0)


def _pad_for_every_window(image, label, crop_size):
    pad_y, pad_x = crop_size
    image = np.pad(image, [(pad_y, pad_y), (pad_x, pad_x), (0, 0)])
    label = np.pad(label, [(pad_y, pad_y), (pad_x, pad_x)], constant_values=IGNORE_LABEL)
    return image, label, (pad_y, pad_x)


def _window(array, y, x, crop_size, flip):
    window = array[y : y + crop_size[0], x : x + crop_size[1]]
    return window[:, ::-1] if flip else window


def test_same_seed_same_output_other_seed_different_output():
    features = make_features(*random_example(24, 48))

    first_image, first_label = train(features, (16, 32), [7, 1])
    again_image, again_label = train(features, (16, 32), [7, 1])
    other_image, other_label = train(features, (16, 32), [7, 2])

    np.testing.assert_array_equal(first_image, again_image)
    np.testing.assert_array_equal(first_label, again_label)
    assert not np.array_equal(first_image, other_image)


def test_photometric_jitter_changes_colours_modestly_and_not_labels():
    image, label = random_example(24, 48)
    features = make_features(image, label)

    differences = []
    for seed in range(5):
        plain_image, plain_label = train(features, (16, 32), [seed, 4], photometric=False)
        jittered_image, jittered_label = train(features, (16, 32), [seed, 4])
        np.testing.assert_array_equal(jittered_label, plain_label)
        rgb_difference = augment.denormalize_image(jittered_image) - augment.denormalize_image(plain_image)
        differences.append(float(tf.reduce_mean(tf.abs(rgb_difference))))
    assert all(0 < difference < 0.15 for difference in differences)


def test_photometric_jitter_keeps_greys_grey():
    grey = np.repeat(np.random.default_rng(3).integers(0, 256, (12, 24, 1), dtype=np.uint8), 3, axis=2)
    features = make_features(grey, np.zeros((12, 24), np.uint8))

    for seed in range(5):
        image, _ = train(features, (12, 24), [seed, 8], scale_range=(1.0, 1.0))
        rgb = augment.denormalize_image(image).numpy()
        np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-4)
        np.testing.assert_allclose(rgb[..., 1], rgb[..., 2], atol=1e-4)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"crop_size": (0, 32)}, "crop_size"),
        ({"crop_size": (16,)}, "crop_size"),
        ({"crop_size": (16, 32), "scale_range": (2.0, 1.0)}, "scale_range"),
        ({"crop_size": (16, 32), "resize": (12.5, 20)}, "resize"),
    ],
)
def test_bad_sizes_raise_one_clear_error(arguments, message):
    features = make_features(*random_example(8, 16))

    with pytest.raises(SegflowError, match=message):
        augment.parse_train(features, **arguments)


def test_the_fast_cpu_normalisation_equals_the_textbook_formula():
    pixels = tf.random.stateless_uniform((2, 5, 7, 3), seed=(3, 4))

    fast = augment._normalize_on_cpu(pixels).numpy()

    np.testing.assert_allclose(fast, augment.normalize_image(pixels).numpy(), atol=1e-6)
    np.testing.assert_allclose(fast, normalized(pixels.numpy() * 255.0), atol=1e-5)


# === Colour jitter and normalisation on the device (segflow.device_augment) ===


def cpu_and_device(image, label, seed, crop_size=(80, 96), **kwargs):
    """`augment_train` on the CPU path, and the device path through `JitterAndNormalize`, same seed."""
    from segflow.device_augment import JitterAndNormalize

    seed = tf.constant(seed, tf.int64)
    cpu_image, cpu_label = augment.augment_train(image, label[..., None], crop_size, seed=seed, **kwargs)
    inputs, device_label = augment.augment_train(image, label[..., None], crop_size, seed=seed, for_device=True, **kwargs)
    device_image = JitterAndNormalize()({key: value[tf.newaxis] for key, value in inputs.items()})[0]
    return (cpu_image.numpy(), cpu_label.numpy()), (np.asarray(device_image), device_label.numpy()), inputs


@pytest.mark.parametrize("photometric", [True, False])
def test_the_device_stage_equals_the_cpu_path_on_the_same_seed(photometric):
    """At scale 1 the crop samples whole pixels, so the uint8 hand-over loses nothing: the two
    paths agree to float32 rounding, padding (rows 64..79 of an 80-high crop) and flips included."""
    image, label = random_example(64, 128, seed=5)
    flips = set()
    for seed in range(8):
        (cpu_image, cpu_label), (device_image, device_label), inputs = cpu_and_device(
            image, label, [seed, 11], scale_range=(1.0, 1.0), photometric=photometric
        )
        np.testing.assert_allclose(device_image, cpu_image, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(device_label, cpu_label)
        assert inputs["image"].dtype == tf.uint8 and device_label.dtype == np.uint8
        # 64 real rows somewhere in the 80 (the box says where), padding around them.
        top, left, height, width = inputs["augment"].numpy()[11:]
        assert (left, height, width) == (0, 64, 96)
        real = np.zeros(80, bool)
        real[int(top) : int(top) + 64] = True
        assert np.all(cpu_label[~real] == IGNORE_LABEL)
        assert np.all(device_image[~real] == 0) and np.all(cpu_image[~real] == 0)
        windows = [label[:, x : x + 96] for x in range(33)]
        flips.add(not any(np.array_equal(device_label[real], window) for window in windows))
    assert flips == {False, True}


def test_the_device_stage_differs_from_the_cpu_path_only_by_rounding_the_crop_to_uint8():
    """With random scales the crop is bilinear: the uint8 hand-over rounds each channel by at most
    0.5 / 255, which the colour matrix and the normalisation scale by at most
    sum |matrix[:, c]| / stddev[c] (the mean grey moves by less than the rounding too)."""
    image, label = random_example(64, 128, seed=6)
    padded = 0
    for seed in range(8):
        (cpu_image, cpu_label), (device_image, device_label), inputs = cpu_and_device(image, label, [seed, 12])
        matrix = inputs["augment"].numpy()[:9].reshape(3, 3)
        bound = 0.5 / 255 * (np.abs(matrix).sum(axis=0) + 0.2) / np.array(augment.STDDEV_RGB) + 1e-5
        np.testing.assert_array_equal(device_label, cpu_label)
        assert np.all(np.abs(device_image - cpu_image) <= bound)
        top, left, height, width = inputs["augment"].numpy()[11:].astype(int)
        padding = np.ones(cpu_label.shape, bool)
        padding[top : top + height, left : left + width] = False
        assert np.all(device_image[padding] == 0) and np.all(cpu_image[padding] == 0)
        padded += padding.any()
    assert padded  # some crops were padded (scales below 80 / 64 = 1.25)
    assert np.abs(device_image - cpu_image).max() > 1e-4  # the bilinear crop was really rounded


def test_the_device_stage_handles_a_batch_of_differently_padded_crops():
    """Each example is jittered with its own matrix and its own box: a batch of three equals the
    three examples one by one (a 40x80 image scaled 1x into an 48x96 crop is padded on two sides)."""
    from segflow.device_augment import JitterAndNormalize

    image, label = random_example(40, 80, seed=7)
    examples = [
        augment.augment_train(image, label[..., None], (48, 96), (1.0, 1.0), seed=tf.constant([seed, 2], tf.int64), for_device=True)[0]
        for seed in range(3)
    ]
    batch = {key: tf.stack([example[key] for example in examples]) for key in examples[0]}
    assert len({tuple(example["augment"].numpy()[11:]) for example in examples}) > 1  # other boxes
    one_by_one = [JitterAndNormalize()({key: value[tf.newaxis] for key, value in example.items()})[0] for example in examples]
    np.testing.assert_allclose(np.asarray(JitterAndNormalize()(batch)), np.stack(one_by_one), atol=1e-6)
