"""The exported SavedModel: a serving signature that needs nothing of segflow.

`serving_default` (endpoint `serve`) takes `images`, uint8 RGB `[batch, height, width, 3]` of any
height and width, and does inside what `segflow predict` does around the model
(`segflow.predict.normalize`, `segflow.evaluate.make_predictor`): scale to [0, 1], normalise
with `segflow.augment.MEAN_RGB` / `STDDEV_RGB`, resize (bilinear) to the model's input size,
run the model, resize the logits (bilinear) back to the input's size, argmax. It returns

- `train_ids`: uint8 `[batch, height, width]`, trainIds 0..18;
- `label_ids`: uint8 `[batch, height, width]`, Cityscapes labelIds (`TRAIN_ID_TO_LABEL_ID`),
  what the Cityscapes test server reads.

A second endpoint, `logits`, is the bare model: float32 normalised images at the model's input
size → float32 logits `[batch, H, W, 19]`.
"""

from __future__ import annotations

import os

import keras

SERVE_ENDPOINT = "serve"
LOGITS_ENDPOINT = "logits"


def export_saved_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Write `model` (float32, one output, a fixed input size) as a SavedModel at `path`."""
    import tensorflow as tf

    from segflow.augment import normalize_image
    from segflow.cityscapes import TRAIN_ID_TO_LABEL_ID

    input_size = tuple(model.input_shape[1:3])
    to_label_ids = tf.constant(TRAIN_ID_TO_LABEL_ID[:256], dtype=tf.uint8)

    def serve(images):
        output_size = tf.shape(images)[1:3]
        normalized = normalize_image(tf.image.convert_image_dtype(images, tf.float32))
        resized = tf.image.resize(normalized, input_size, method="bilinear")
        logits = tf.cast(model(resized, training=False), tf.float32)
        logits = tf.image.resize(logits, output_size, method="bilinear")
        train_ids = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.uint8)
        return {"train_ids": train_ids, "label_ids": tf.gather(to_label_ids, tf.cast(train_ids, tf.int32))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also `serving_default`, the signature TF Serving calls.
    archive.add_endpoint(SERVE_ENDPOINT, serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint(
        LOGITS_ENDPOINT,
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, *input_size, 3], tf.float32, name="images")],
    )
    archive.write_out(str(path), verbose=False)
