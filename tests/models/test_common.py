"""The checks every registered architecture passes, parametrized over `segflow.models.ARCHITECTURES`,
so a new model is covered by registering it: output shapes, config round trip, overfitting one
batch (with its training-only outputs and loss weights, if it has any), `.keras` save/load."""

import pytest

from model_checks import (
    TINY_OPTIONS,
    check_config_round_trip,
    check_output_shapes,
    check_overfits_one_batch,
    check_save_load,
    tiny_model,
)
from segflow.models import ARCHITECTURES

NAMES = list(ARCHITECTURES)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    check_output_shapes(name, **TINY_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    check_config_round_trip(tiny_model(name, **TINY_OPTIONS.get(name, {})))


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_batch(name):
    check_overfits_one_batch(name, aux_outputs=ARCHITECTURES[name].has_aux_outputs, **TINY_OPTIONS.get(name, {}))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_save_load(name, tmp_path):
    check_save_load(tiny_model(name, **TINY_OPTIONS.get(name, {})), tmp_path)
