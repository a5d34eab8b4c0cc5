"""Synthetic first-pass perfusion phantom: multi-vendor 2D+T studies with exact ground truth.

Public API:
- ``generate_study(preset="siemens-flash-3t", seed=0, condition="stress", n_slices=3, units="signal", **overrides)
  -> PhantomStudy`` (``.study``, ``.truth`` list of ``SliceTruth``, ``.params``, ``.aif_mask``)
- ``generate_training_slice(rng, preset, n_frames=30, size=None) -> (series (T, Y, X) float32 in [0, 1], labels)``
- ``write_phantom(phantom_study, out_dir)``; ``PRESET_NAMES``.
Modules: anatomy (shapes), kinetics (Gd curves), signal (sequence, noise, motion), presets, sectors (AHA truth),
generator (assembly).
"""
from .presets import DEFAULT_PRESET, PRESET_NAMES, PRESETS

_GENERATOR_NAMES = ("PhantomStudy", "SliceTruth", "generate_study", "generate_training_slice", "write_phantom")


def __getattr__(name):
    # the generator pulls in scipy.signal (about a second): import it on first use, so that `perfusion --help` and
    # the presets stay fast
    if name in _GENERATOR_NAMES:
        from . import generator
        return getattr(generator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PhantomStudy", "SliceTruth", "generate_study", "generate_training_slice", "write_phantom", "PRESET_NAMES",
           "PRESETS", "DEFAULT_PRESET"]
