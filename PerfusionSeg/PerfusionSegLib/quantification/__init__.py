"""Quantification: signal to [Gd], arterial input function, and myocardial blood flow (Fermi, two-compartment).

Conventions: [Gd] in mmol/L; AIF = LV blood [Gd] (haematocrit converts it to plasma where a model needs it);
MBF and PS in ml/min/g with a myocardial tissue density of 1.05 g/ml; volumes in ml/g; times in s.
"""
from .aif import (DEFAULT_HEMATOCRIT, blood_to_plasma, detect_foot_peak, extract_aif, locate_lv_in_aif_images, make_aif,
                  subtract_baseline, t2star_correct, validate_aif_curve)
from .fermi import MBFResult, fermi_mbf
from .gd_conversion import (GdLookupTable, SequenceParameters, build_lut, default_sequence, sequence_from_metadata,
                            signal_to_gd, simulate_signal)
from .kinetic_fitting import TISSUE_DENSITY_G_PER_ML
from .mbf import MODELS, compute_mbf_map, fit_regions
from .two_compartment import two_compartment_mbf

__all__ = [
    "DEFAULT_HEMATOCRIT", "TISSUE_DENSITY_G_PER_ML", "MODELS", "MBFResult", "GdLookupTable", "SequenceParameters",
    "blood_to_plasma", "build_lut", "compute_mbf_map", "default_sequence", "detect_foot_peak", "extract_aif",
    "fermi_mbf", "fit_regions", "locate_lv_in_aif_images", "make_aif", "sequence_from_metadata", "signal_to_gd",
    "simulate_signal", "subtract_baseline", "t2star_correct", "two_compartment_mbf", "validate_aif_curve",
]
