"""The TFRecord schema segflow writes and reads: the DeepLab / TF Model Garden segmentation keys.

`image/encoded` holds the original leftImg8bit PNG bytes unchanged; the label is a PNG of
trainIds (255 = ignore). Shards are named `{split}-{i:05d}-of-{n:05d}.tfrecord`.
"""

from __future__ import annotations


class FEATURE_KEYS:
    """Feature keys, defined once (as in TFM `tf_example_feature_key.py`)."""

    image = "image/encoded"
    filename = "image/filename"
    image_format = "image/format"
    height = "image/height"
    width = "image/width"
    channels = "image/channels"
    label = "image/segmentation/class/encoded"
    label_format = "image/segmentation/class/format"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(split: str) -> str:
    return f"{split}-*-of-*.tfrecord"


def decode_example(serialized):
    """Parse one serialized Example into raw tensors (bytes and ints); no image decoding here."""
    import tensorflow as tf

    spec = {
        FEATURE_KEYS.image: tf.io.FixedLenFeature((), tf.string),
        FEATURE_KEYS.filename: tf.io.FixedLenFeature((), tf.string, default_value=""),
        FEATURE_KEYS.image_format: tf.io.FixedLenFeature((), tf.string, default_value="png"),
        FEATURE_KEYS.height: tf.io.FixedLenFeature((), tf.int64),
        FEATURE_KEYS.width: tf.io.FixedLenFeature((), tf.int64),
        FEATURE_KEYS.channels: tf.io.FixedLenFeature((), tf.int64, default_value=3),
        FEATURE_KEYS.label: tf.io.FixedLenFeature((), tf.string),
        FEATURE_KEYS.label_format: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    }
    return tf.io.parse_single_example(serialized, spec)
