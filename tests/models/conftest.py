"""Model tests run on whichever backend KERAS_BACKEND names (CI runs TensorFlow, then JAX)."""

import keras

if keras.backend.backend() == "jax":
    import jax

    # Keras initialises every weight with jax.random; the non-partitionable threefry compiles
    # about 6x faster per weight shape on CPU, which is most of a tiny model's build time.
    # Only the random values change, and no test depends on them.
    jax.config.update("jax_threefry_partitionable", False)
