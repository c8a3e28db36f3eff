"""Building blocks shared by the segmentation models: argument checks, channel scaling,
conv-BN-ReLU, the float32 logits head, SegNet's pooling-index unpooling, and the grid pooling
of ICNet's pyramid.

Everything here is plain Keras 3 (`keras`, `keras.ops`), so it runs on TensorFlow, JAX and
PyTorch alike.
"""

from __future__ import annotations

import keras
from keras import ops

from segflow.errors import SegflowError

# Every model downsamples by at most 32, so this is the one size rule for inputs.
SIZE_DIVISOR = 32
# The fewest channels a layer keeps when `width` shrinks a model for tests.
MIN_FILTERS = 4

# === Argument checks and scaling ===


def check_arguments(
    architecture: str, num_classes: int, input_shape: tuple[int, int, int], width: float
) -> None:
    """Fails first, naming the value, instead of deep inside the graph."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SegflowError(f"{architecture}: num_classes must be a positive integer, got {num_classes!r}")
    if not (isinstance(width, (int, float)) and width > 0):
        raise SegflowError(f"{architecture}: width must be a positive number, got {width!r}")
    if (
        len(input_shape) != 3
        or not all(isinstance(size, int) and size > 0 for size in input_shape)
        or input_shape[0] % SIZE_DIVISOR
        or input_shape[1] % SIZE_DIVISOR
    ):
        raise SegflowError(
            f"{architecture}: input_shape must be (height, width, channels) with height and width "
            f"divisible by {SIZE_DIVISOR}, got {tuple(input_shape)!r}"
        )


def scaled(filters: int, width: float) -> int:
    """`filters` times the model's width multiplier, never fewer than MIN_FILTERS."""
    return max(MIN_FILTERS, int(round(filters * width)))


# === Blocks ===


def apply_conv_bn_relu(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    strides: int = 1,
    dilation_rate: int = 1,
    activation: bool = True,
):
    """A padded convolution without bias, batch norm, and (unless `activation=False`) ReLU."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def apply_logits(x, num_classes: int, input_shape: tuple[int, int, int], name: str, kernel_size: int = 1):
    """Classifier convolution, then bilinear upsampling to the input size, both in float32.

    The two layers ignore a mixed-precision policy, so logits (and the loss on them) are float32.
    The last layer is called `name`, which is what Keras calls the model output.
    """
    factor_h = input_shape[0] // x.shape[1]
    factor_w = input_shape[1] // x.shape[2]
    upsample = (factor_h, factor_w) != (1, 1)
    x = keras.layers.Conv2D(
        num_classes,
        kernel_size,
        padding="same",
        dtype="float32",
        name=f"{name}_classifier" if upsample else name,
    )(x)
    if upsample:
        x = keras.layers.UpSampling2D(
            (factor_h, factor_w), interpolation="bilinear", dtype="float32", name=name
        )(x)
    return x


# === Custom layers ===


@keras.saving.register_keras_serializable(package="segflow")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """2×2 max pooling (stride 2) that also returns where each maximum came from.

    The index is the position inside its 2×2 window, row-major (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right), per channel; on ties the first position wins. Computed with
    `keras.ops` on reshaped windows, so it works on every backend (unlike
    `tf.nn.max_pool_with_argmax`). Height and width must be even.

    Paper: SegNet, https://arxiv.org/abs/1511.00561 (Sec. 3, "max-pooling indices").

    Example:
    >>> pooled, indices = MaxPoolingWithArgmax2D()(keras.ops.ones((1, 4, 4, 3)))
    >>> tuple(pooled.shape), tuple(indices.shape)
    ((1, 2, 2, 3), (1, 2, 2, 3))
    """

    def call(self, inputs):
        windows = _to_windows(inputs)
        return ops.max(windows, axis=-1), ops.cast(ops.argmax(windows, axis=-1), "int32")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        pooled_shape = (batch, height // 2, width // 2, channels)
        return pooled_shape, pooled_shape

    def compute_output_spec(self, inputs):
        pooled_shape, _ = self.compute_output_shape(inputs.shape)
        return (
            keras.KerasTensor(pooled_shape, dtype=self.compute_dtype),
            keras.KerasTensor(pooled_shape, dtype="int32"),
        )


@keras.saving.register_keras_serializable(package="segflow")
class MaxUnpooling2D(keras.layers.Layer):
    """Puts each value back at the position its max-pooling index points to; zeros elsewhere.

    Takes `[values, indices]`, both `(batch, h, w, c)` with indices from
    `MaxPoolingWithArgmax2D`, and returns `(batch, 2h, 2w, c)`. This is SegNet's non-learned
    upsampling: the decoder recovers the boundary positions the encoder pooled away.

    Paper: SegNet, https://arxiv.org/abs/1511.00561 (Fig. 3).

    Example:
    >>> values, indices = MaxPoolingWithArgmax2D()(keras.ops.ones((1, 4, 4, 3)))
    >>> tuple(MaxUnpooling2D()([values, indices]).shape)
    (1, 4, 4, 3)
    """

    def call(self, inputs):
        values, indices = inputs
        placed = ops.one_hot(indices, 4, dtype=values.dtype) * ops.expand_dims(values, -1)
        return _from_windows(placed)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape[0]
        return (batch, 2 * height if height else None, 2 * width if width else None, channels)


@keras.saving.register_keras_serializable(package="segflow")
class GridAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed `grid_size`×`grid_size` output, whatever the input size.

    Windows follow PyTorch's adaptive pooling: cell i spans rows floor(i·h/g) to
    ceil((i+1)·h/g), so an input smaller than the grid repeats rows instead of failing. Computed
    as two small matrix products, so it runs on every backend and in compiled graphs.

    Args:
        grid_size: int, cells per side of the output grid.

    Paper: pyramid pooling, PSPNet, https://arxiv.org/abs/1612.01105 (Fig. 3).

    Example:
    >>> tuple(GridAveragePooling2D(6)(keras.ops.ones((1, 2, 4, 8))).shape)
    (1, 6, 6, 8)
    """

    def __init__(self, grid_size: int, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = grid_size

    def call(self, inputs):
        rows = ops.convert_to_tensor(_pooling_matrix(inputs.shape[1], self.grid_size), dtype=inputs.dtype)
        columns = ops.convert_to_tensor(_pooling_matrix(inputs.shape[2], self.grid_size), dtype=inputs.dtype)
        return ops.einsum("ph,bhwc,qw->bpqc", rows, inputs, columns)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid_size, self.grid_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size}


def _pooling_matrix(size: int, grid_size: int) -> list[list[float]]:
    """(grid_size, size) matrix whose row i averages cell i's window."""
    matrix = []
    for cell in range(grid_size):
        start = (cell * size) // grid_size
        end = -((-(cell + 1) * size) // grid_size)
        matrix.append([1.0 / (end - start) if start <= index < end else 0.0 for index in range(size)])
    return matrix


def _to_windows(images):
    """(b, h, w, c) → (b, h/2, w/2, c, 4): each 2×2 window's values, row-major, on the last axis."""
    _, height, width, channels = ops.shape(images)
    windows = ops.reshape(images, (-1, height // 2, 2, width // 2, 2, channels))
    windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
    return ops.reshape(windows, (-1, height // 2, width // 2, channels, 4))


def _from_windows(windows):
    """The inverse of `_to_windows`: (b, h, w, c, 4) → (b, 2h, 2w, c)."""
    _, height, width, channels, _ = ops.shape(windows)
    images = ops.reshape(windows, (-1, height, width, channels, 2, 2))
    images = ops.transpose(images, (0, 1, 4, 2, 5, 3))
    return ops.reshape(images, (-1, 2 * height, 2 * width, channels))
