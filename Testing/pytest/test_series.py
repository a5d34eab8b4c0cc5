"""The data model refuses unusable series and keeps real (irregular) frame times."""
import numpy as np
import pytest

from PerfusionSegLib.errors import InvalidParameterError, InvalidSeriesError, PerfusionInputError
from PerfusionSegLib.series import AIF, SliceSeries, Study, assign_levels


def _series(t=20, y=24, x=20, **kw):
    rng = np.random.default_rng(0)
    kw.setdefault("times", np.arange(t) * 0.5)
    kw.setdefault("spacing", (1.5, 1.5))
    return SliceSeries(rng.random((t, y, x)), **kw)


def test_valid_series_is_float32_and_described():
    s = _series()
    assert s.data.dtype == np.float32
    d = s.describe()
    assert d["frames"] == 20 and d["matrix_yx"] == [24, 20] and d["regular_timing"] is True


def test_irregular_times_are_kept():
    times = np.cumsum(np.r_[0.0, np.full(19, 0.8)])
    times[10:] += 0.8  # a missed trigger
    s = _series(times=times)
    np.testing.assert_array_equal(s.times, times)
    assert not s.is_regular


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((20, 8, 8, 2)), "3-D"),
        (np.random.default_rng(1).random((5, 16, 16)), "at least 10 frames"),
        (np.full((12, 16, 16), 3.0), "constant"),
        (np.where(np.eye(16)[None].repeat(12, 0) > 0, np.nan, 1.0), "NaN or Inf"),
        (np.where(np.eye(16)[None].repeat(12, 0) > 0, np.inf, 1.0), "NaN or Inf"),
        (np.random.default_rng(1).random((12, 4, 3000)), "absurd matrix"),
    ],
)
def test_bad_arrays_raise_typed_errors(data, message):
    with pytest.raises(InvalidSeriesError, match=message):
        SliceSeries(data, np.arange(data.shape[0]) * 0.5, (1.0, 1.0))


def test_bad_times_and_spacing():
    with pytest.raises(InvalidSeriesError, match="strictly increasing"):
        _series(times=np.r_[np.arange(19) * 0.5, 1.0])
    with pytest.raises(InvalidSeriesError, match="frame times"):
        _series(times=np.arange(5) * 0.5)
    with pytest.raises(InvalidSeriesError, match="spacing"):
        _series(spacing=(0.0, 1.0))
    with pytest.raises(InvalidParameterError):
        _series(level="top")
    # typed errors are ValueErrors the CLI maps to exit status 2
    assert issubclass(InvalidSeriesError, PerfusionInputError) and issubclass(InvalidSeriesError, ValueError)


def test_study_orders_by_level_and_assigns_missing_levels():
    a, b, c = _series(level="apical"), _series(level="basal"), _series(level="mid")
    st = Study([a, b, c], condition="stress")
    assert [s.level for s in st] == ["basal", "mid", "apical"]
    st2 = Study([_series(), _series(), _series()])
    assert [s.level for s in st2] == ["basal", "mid", "apical"]
    assert assign_levels(6) == ["basal", "basal", "mid", "mid", "apical", "apical"]


def test_aif_validation():
    AIF(np.r_[np.zeros(5), np.ones(10)], np.arange(15) * 0.5)
    with pytest.raises(InvalidSeriesError):
        AIF(np.ones(15), np.arange(14) * 0.5)
    with pytest.raises(InvalidParameterError):
        AIF(np.ones(15), np.arange(15) * 0.5, hematocrit=1.2)
