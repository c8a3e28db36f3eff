"""Keras' SGD and AdamW with one TensorFlow update kernel per variable, so the training step
traces in half the time.

Keras 3 builds each variable's update from `keras.ops`: AdamW about 20 graph ops per variable
(its step powers, bias correction, moments, square root, division), plus, for the decoupled
weight decay, the learning-rate schedule evaluated again for every decayed variable. Tracing and
optimising those ops was 11 of the 22 CPU-seconds of the demo's ICNet first step (247
variables; profiled with py-spy, BENCHMARKS.md 'Demo'). These subclasses compute the scalar
factors once per step and update each variable with TensorFlow's own kernel, the one Keras 2 and
`tf.compat.v1.train` use:

- AdamW: `ResourceApplyAdam` (m ← m + (g − m)(1 − β1); v ← v + (g² − v)(1 − β2);
  w ← w − lr·√(1 − β2ᵗ)/(1 − β1ᵗ)·m/(√v + ε)), the same formula as `keras.optimizers.Adam`;
- SGD: `ResourceApplyKerasMomentum` (m ← μm − lr·g; w ← w + m, or w + μm − lr·g with Nesterov),
  the same formula as `keras.optimizers.SGD`;
- weight decay: w ← w − w·wd·lr with `lr·wd` computed once per step.

The variables, their names and the saved state are Keras' own, so checkpoints move freely
between these classes and Keras'; the results agree to float rounding (tests/test_optimizers.py).
Keras' path runs unchanged where no kernel applies: another backend, a distribution strategy
(MirroredStrategy's per-replica updates), AMSGrad, EMA, gradient accumulation, sparse gradients.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _use_kernels(optimizer: keras.optimizers.Optimizer, grads: list) -> bool:
    return (
        keras.backend.backend() == "tensorflow"
        and not tf.distribute.has_strategy()
        and not optimizer.use_ema
        and not optimizer.gradient_accumulation_steps
        and not any(isinstance(grad, tf.IndexedSlices) for grad in grads)
    )


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


class _WeightDecayOnce:
    """Decoupled weight decay with the schedule evaluated once per step, not once per variable."""

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or not _use_kernels(self, []):
            return super()._apply_weight_decay(variables)
        decay = tf.cast(self.learning_rate, "float32") * self.weight_decay
        for variable in variables:
            if self._use_weight_decay(variable):
                weights = _tf_variable(variable)
                weights.assign_sub(weights * tf.cast(decay, weights.dtype))


@keras.saving.register_keras_serializable(package="segflow")
class AdamW(_WeightDecayOnce, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` (same arguments, variables and results) updating each variable
    with TensorFlow's `ResourceApplyAdam` kernel."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.amsgrad or not _use_kernels(self, grads):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        step = tf.cast(self.iterations + 1, "float32")
        beta_1, beta_2 = tf.constant(self.beta_1, "float32"), tf.constant(self.beta_2, "float32")
        scalars = {"beta1_power": beta_1**step, "beta2_power": beta_2**step, "lr": tf.cast(learning_rate, "float32"),
                   "beta1": beta_1, "beta2": beta_2, "epsilon": tf.constant(self.epsilon, "float32")}  # fmt: skip
        for grad, variable in zip(grads, trainable_variables):
            index = self._get_variable_index(variable)
            weights = _tf_variable(variable)
            dtype = weights.dtype
            tf.raw_ops.ResourceApplyAdam(
                var=weights.handle,
                m=_tf_variable(self._momentums[index]).handle,
                v=_tf_variable(self._velocities[index]).handle,
                grad=tf.cast(grad, dtype),
                **{name: tf.cast(value, dtype) for name, value in scalars.items()},
            )


@keras.saving.register_keras_serializable(package="segflow")
class SGD(_WeightDecayOnce, keras.optimizers.SGD):
    """`keras.optimizers.SGD` (same arguments, variables and results) updating each variable with
    TensorFlow's `ResourceApplyKerasMomentum` kernel when it has momentum."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.momentum == 0 or not _use_kernels(self, grads):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        rate = tf.cast(learning_rate, "float32")
        momentum = tf.constant(self.momentum, "float32")
        for grad, variable in zip(grads, trainable_variables):
            weights = _tf_variable(variable)
            dtype = weights.dtype
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=weights.handle,
                accum=_tf_variable(self.momentums[self._get_variable_index(variable)]).handle,
                lr=tf.cast(rate, dtype),
                grad=tf.cast(grad, dtype),
                momentum=tf.cast(momentum, dtype),
                use_nesterov=self.nesterov,
            )
