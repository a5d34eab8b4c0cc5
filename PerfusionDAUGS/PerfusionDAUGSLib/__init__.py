"""PerfusionDAUGSLib: patch-level model pools, uncertainty maps and data-adaptive selection (DAUGS), no Slicer imports."""
__version__ = "0.1.0"
