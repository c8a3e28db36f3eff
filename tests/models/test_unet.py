import pytest

from model_checks import (
    TINY_SHAPE,
    tiny_model,
)
from segflow.models.complexity import build_for_shapes


@pytest.fixture(scope="module")
def model():
    return tiny_model("unet")






def test_params_match_paper():
    # Ronneberger et al. 2015, 64→1024 filters: ≈31.0 M (with BN, as in most reimplementations).
    assert build_for_shapes("unet").count_params() == pytest.approx(31.0e6, rel=0.05)


def test_four_poolings_and_16_times_the_filters_at_the_bottom():
    model = tiny_model("unet")
    pools = [layer for layer in model.layers if layer.name.endswith("_pool")]
    assert len(pools) == 4
    bottom = model.get_layer("bottleneck_2_conv")
    assert bottom.output.shape[1:3] == (TINY_SHAPE[0] // 16, TINY_SHAPE[1] // 16)
    assert bottom.filters == 16 * model.get_layer("encoder1_2_conv").filters  # 64 → 1024 at width 1.0
