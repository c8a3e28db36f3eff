"""The learning-rate schedule of DeepLab / PSPNet / ICNet training: linear warmup, then poly decay.

It is a function of the optimizer's step only, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="segflow")
class PolyWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`lr(step)`: linear from `warmup_start * peak` to `peak` over `warmup_steps`, then
    `peak * (1 - progress) ** power` down to `end_learning_rate` at `total_steps`.

    Args:
        peak_learning_rate: float, the rate at the end of warmup.
        total_steps: int, the step at which the rate reaches `end_learning_rate`.
        warmup_steps: int, steps of linear warmup (0 = none).
        power: float, poly exponent; 0.9 as in DeepLab.
        end_learning_rate: float, the floor after `total_steps`.
        warmup_start: float, fraction of the peak the warmup starts from.

    Example:
    >>> schedule = PolyWarmup(0.01, total_steps=1000, warmup_steps=100)
    >>> float(schedule(100))
    0.01
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 0.9,
        end_learning_rate: float = 0.0,
        warmup_start: float = 0.1,
    ):
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps; got {warmup_steps} and {total_steps}")
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.power = power
        self.end_learning_rate = end_learning_rate
        self.warmup_start = warmup_start

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, end = self.peak_learning_rate, self.end_learning_rate
        warmup = float(max(self.warmup_steps, 1))
        warmup_rate = peak * (self.warmup_start + (1.0 - self.warmup_start) * step / warmup)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        poly_rate = (peak - end) * ops.power(1.0 - progress, self.power) + end
        return ops.where(step < self.warmup_steps, warmup_rate, poly_rate)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "warmup_start": self.warmup_start,
        }
