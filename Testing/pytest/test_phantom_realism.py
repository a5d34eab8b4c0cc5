"""The realism script's border and motion statistics must read known widths and shifts."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("phantom_realism", REPO / "scripts" / "phantom_realism.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _heart(sigma_mm: float, spacing: float = 0.5):
    """A bright 20 mm pool, a dark 10 mm wall, a mid-grey surround; blurred by a Gaussian of ``sigma_mm``."""
    n = int(120 / spacing)
    yy, xx = (np.mgrid[0:n, 0:n] - (n - 1) / 2) * spacing
    r = np.hypot(yy, xx)
    img = np.where(r < 20, 1.0, np.where(r < 30, 0.3, 0.6))
    return ndimage.gaussian_filter(img, sigma_mm / spacing), r < 20


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_edge_width_of_a_blurred_step(sigma):
    # the 80 % -> 20 % fall of a step blurred by a Gaussian spans 2 x 0.8416 sigma
    frame, pool = _heart(sigma)
    width = _script().edge_width(frame, pool, spacing=0.5)
    assert width == pytest.approx(1.683 * sigma, abs=0.3)


def test_edge_width_is_nan_without_a_border():
    frame, pool = _heart(2.0)
    assert np.isnan(_script().edge_width(np.ones_like(frame), pool, spacing=0.5))


def test_frame_motion_reads_a_known_shift():
    frame, pool = _heart(1.0)
    shifts = [0, 2, 0, 2, 0, 2, 0, 2]                       # pixels along x, from frame to frame
    data = np.stack([np.roll(frame, s, axis=1) for s in shifts])     # the frames from the LV peak on
    assert _script().frame_motion(data, pool, spacing=0.5) == pytest.approx(1.0, abs=0.05)   # 2 px of 0.5 mm
    still = np.stack([frame] * 8)
    assert _script().frame_motion(still, pool, spacing=0.5) == pytest.approx(0.0, abs=1e-9)
