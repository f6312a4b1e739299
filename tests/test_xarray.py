"""A cache opens as a whole with xarray.open_datatree: every group's dimension names agree on their sizes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build

xr = pytest.importorskip("xarray", reason="the `test` extra installs xarray")


@pytest.mark.parametrize("kind", ["objects", "scenes", "rooms"])
def test_a_cache_opens_as_an_xarray_datatree(tmp_path, kind):
    url = str(tmp_path / f"{kind}.zarr")
    _, data = build(url, kind, max_block_rows=4)
    tree = xr.open_datatree(url, engine="zarr", consolidated=False)
    if kind == "objects":
        np.testing.assert_allclose(tree["points"].values, data["rows"]["points"], atol=1e-3)  # stored as float16
        assert tree["split"]["train"].dims == ("train_row",) and tree["split"]["test"].size == 12
        assert tree["teachers/clip-tiny/text"].dims == ("row", "caption", "dim")
    elif kind == "rooms":
        offsets = tree["rooms"]["offsets"].values
        np.testing.assert_array_equal(tree["points"].values[offsets[2]:offsets[3]],
                                      data["ragged"]["points"][2].astype(np.float32))
        assert tree["boxes"]["box"].dims == ("box", "cxyz_dxyz") and tree["rooms"]["ids"].dims == ("room",)
    else:
        K = tree["cameras"]["K"]
        assert K.dims == ("frame", "camera", "K_row", "K_col") and tree["cameras"]["T_lidar_to_cam"].shape[-1] == 4
        offsets = tree["pairs"]["offsets"].values
        np.testing.assert_array_equal(tree["pairs"]["point"].values[offsets[3]:offsets[4]],
                                      data["ragged"]["pairs/point"][3])


def test_the_built_demo_caches_open_as_datatrees(small_demo_cache):
    tree = xr.open_datatree(small_demo_cache, engine="zarr", consolidated=False)
    assert tree["views"]["rgb"].dims[0] == "row" and tree["label"].size == tree["ids"].size
