"""The phantom transfer check must show the real slices to the network scaled as training and inference scale them."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DAUGS_DEV = REPO.parent / "shared" / "data" / "daugs_dev"


def _script():
    spec = importlib.util.spec_from_file_location("phantom_transfer_check", REPO / "scripts" / "phantom_transfer_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not DAUGS_DEV.exists(), reason=f"real data absent: {DAUGS_DEV}")
def test_daugs_dev_slices_get_the_robust_max_scaling():
    from PerfusionSegLib.preprocess import normalise
    from PerfusionSegLib.readers import load_series

    cases = _script().load_daugs_dev()
    assert [c[0] for c in cases] == ["Basal", "Mid", "Apical"]
    for level, image, labels in cases:
        stored = load_series(DAUGS_DEV / "Images" / f"Fig6-exD1-{level}.mat", spacing=0.9, dt=1.0).data
        assert image.shape == stored.shape == (30, 128, 128) and labels.shape == (128, 128)
        np.testing.assert_allclose(image, normalise(stored, "robust_max")[0])
        assert image.max() <= 1.0 and np.percentile(image, 99.5) == pytest.approx(1.0, abs=1e-3)
        # the stored min-max scaling puts the blood pool's peak at 0.3-0.5; the robust max lifts it by > 1.3x
        stored01 = (stored - stored.min()) / (stored.max() - stored.min())
        assert image[:, labels == 1].mean(axis=1).max() > 1.3 * stored01[:, labels == 1].mean(axis=1).max()


ML_PERFUSION = REPO.parent / "shared" / "data" / "ml_perfusion_subset"


@pytest.mark.skipif(not ML_PERFUSION.exists(), reason=f"real data absent: {ML_PERFUSION}")
def test_ml_perfusion_cases_are_centred_network_inputs_with_project_codes():
    """The selection set of the transfer check: every labelled series, 30 x 128 x 128 in [0, 1], labels mapped to
    the project codes (1 blood pool, 2 myocardium) and the crop centred on the labelled blood pool."""
    script = _script()
    cases = script.load_ml_perfusion()
    assert len(cases) == len(list(ML_PERFUSION.glob("*_gt.nii.gz")))
    for name, image, labels in cases[:6]:
        assert image.shape == (30, 128, 128) and labels.shape == (128, 128)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any() and (labels == 2).any()
        cy, cx = np.argwhere(labels == 1).mean(axis=0)
        assert abs(cy - 63.5) < 3 and abs(cx - 63.5) < 3
    assert script.myocardium_dice(cases[0][2], cases[0][2]) == 1.0
    assert script.myocardium_dice(np.zeros((4, 4)), np.full((4, 4), 2)) == 0.0


def test_false_positive_split_and_wall_ratio_on_known_shapes():
    """Rings with known radii: a prediction one pixel thicker inward puts exactly that ring inside the pool."""
    script = _script()
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    ref = np.where(r < 20, 1, np.where(r < 28, 2, 0)).astype(np.uint8)
    pred = np.where(r < 16, 1, np.where(r < 28, 2, 0)).astype(np.uint8)       # wall 12 px against 8
    far = np.zeros_like(pred)
    far[5:9, 5:9] = 2                                                         # 16 px far from the heart
    split = script.false_positive_split([pred, far], [ref, ref])
    tp = int(((pred == 2) & (ref == 2)).sum())
    assert split["pool"] == round(int(((r >= 16) & (r < 20)).sum()) / tp, 3)
    assert split["near"] == 0.0 and split["far"] == round(16 / tp, 3)
    assert script.wall_ratio(pred, ref) == pytest.approx(12 / 8, rel=0.1)
    assert script.wall_ratio(ref, ref) == 1.0
    assert np.isnan(script.wall_ratio(pred, np.zeros_like(ref)))
