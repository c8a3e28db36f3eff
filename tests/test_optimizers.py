"""segflow.optimizers: Keras' SGD and AdamW updating with TensorFlow's kernels give Keras' results,
keep Keras' saved state, and trace far fewer graph ops."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from segflow import optimizers  # noqa: E402
from segflow.schedules import PolyWarmup  # noqa: E402

OPTIMIZERS = {
    "adamw": (keras.optimizers.AdamW, optimizers.AdamW, {"weight_decay": 0.05}),
    "sgd": (keras.optimizers.SGD, optimizers.SGD, {"momentum": 0.9, "weight_decay": 0.05}),
    "sgd-nesterov": (keras.optimizers.SGD, optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
}


def _model() -> keras.Model:
    """A small regression model: smooth enough that rounding differences do not grow over steps."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(inputs)
    hidden = keras.layers.LayerNormalization(name="norm")(hidden)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))


def _train(optimizer: keras.optimizers.Optimizer, steps: int = 6) -> keras.Model:
    model = _model()
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    images, targets = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    for _ in range(steps):
        model.train_on_batch(images, targets)
    return model


def _schedule():
    return PolyWarmup(0.05, total_steps=6, warmup_steps=2)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_kernels_give_keras_results(name):
    keras_class, segflow_class, arguments = OPTIMIZERS[name]
    expected = _train(keras_class(_schedule(), **arguments))
    got = _train(segflow_class(_schedule(), **arguments))
    for want, have in zip(expected.trainable_variables + expected.optimizer.variables,
                          got.trainable_variables + got.optimizer.variables):  # fmt: skip
        assert want.path.split("/", 1)[1] == have.path.split("/", 1)[1]  # the optimizer name is uniquified
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=want.path)
    assert int(got.optimizer.iterations) == 6
    # The weights moved: a test of updates that never happen would pass on any two optimizers.
    assert not np.allclose(np.asarray(got.trainable_variables[0]), np.asarray(_model().trainable_variables[0]))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_an_update_traces_a_fraction_of_keras_graph_ops(name):
    """AdamW: about 20 ops per variable in Keras, one kernel here; the schedule is evaluated once
    for the weight decay instead of once per decayed variable."""
    keras_class, segflow_class, arguments = OPTIMIZERS[name]

    def traced_ops(optimizer):
        model = _model()
        optimizer.build(model.trainable_variables)
        update = tf.function(lambda grads: optimizer.apply(grads, model.trainable_variables))
        specs = [tf.TensorSpec(variable.shape, "float32") for variable in model.trainable_variables]
        return len(update.get_concrete_function(specs).graph.get_operations())

    keras_ops = traced_ops(keras_class(_schedule(), **arguments))
    segflow_ops = traced_ops(segflow_class(_schedule(), **arguments))
    assert segflow_ops < keras_ops / 2, (segflow_ops, keras_ops)


def test_checkpoints_move_between_keras_and_the_kernels(tmp_path):
    """Same variables, same names: a checkpoint written with Keras' AdamW resumes with segflow's,
    and training goes on as Keras' would."""
    trained = _train(keras.optimizers.AdamW(_schedule(), weight_decay=0.05), steps=3)
    trained.save_weights(tmp_path / "model.weights.h5")

    resumed = _model()
    resumed.compile(optimizer=optimizers.AdamW(_schedule(), weight_decay=0.05), loss="mse")
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "model.weights.h5")
    assert int(resumed.optimizer.iterations) == 3
    for want, have in zip(trained.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(have), np.asarray(want))


def _kernels_unavailable(monkeypatch):
    def refuse(**_):
        raise AssertionError("a TensorFlow kernel was used where Keras' update must run")

    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", refuse)
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyKerasMomentum", refuse)


def test_under_a_distribution_strategy_keras_update_runs(monkeypatch):
    """MirroredStrategy updates each replica's copy: the kernels are not used there (they would
    raise here), and the result is still Keras'."""
    expected = _train(keras.optimizers.AdamW(_schedule(), weight_decay=0.05))
    _kernels_unavailable(monkeypatch)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        got = _train(optimizers.AdamW(_schedule(), weight_decay=0.05))
    for want, have in zip(expected.trainable_variables, got.trainable_variables):
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arguments", [{"amsgrad": True}, {"use_ema": True}, {"gradient_accumulation_steps": 2}])
def test_options_without_a_kernel_take_keras_update(arguments, monkeypatch):
    expected = _train(keras.optimizers.AdamW(_schedule(), weight_decay=0.05, **arguments))
    _kernels_unavailable(monkeypatch)
    got = _train(optimizers.AdamW(_schedule(), weight_decay=0.05, **arguments))
    for want, have in zip(expected.trainable_variables, got.trainable_variables):
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_mixed_precision_loss_scaling_wraps_the_kernels():
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer; the inner one still
    updates the float32 variables with the kernels and gives Keras' result."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        expected = _train(keras.optimizers.LossScaleOptimizer(keras.optimizers.AdamW(_schedule(), weight_decay=0.05)))
        got = _train(keras.optimizers.LossScaleOptimizer(optimizers.AdamW(_schedule(), weight_decay=0.05)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for want, have in zip(expected.trainable_variables, got.trainable_variables):
        # float16 activations: rounding moves the weights by ~1e-4; a wrong update moves them by
        # about the learning rate (0.05 per step).
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-2, atol=1e-3)
    # The same updates applied (loss scaling may skip a step with non-finite gradients in both).
    assert int(got.optimizer.iterations) == int(expected.optimizer.iterations) > 0


def test_saved_and_loaded_by_name():
    optimizer = optimizers.AdamW(_schedule(), weight_decay=0.05)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(restored) is optimizers.AdamW and restored.weight_decay == 0.05
