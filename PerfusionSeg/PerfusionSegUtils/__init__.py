"""Slicer glue for the CardiacPerfusion modules (private to the extension, not part of the pip package).

- ``nodes``: MRML node <-> numpy / SliceSeries conversion and result-node creation (needs Slicer).
- ``dependencies``: torch through the PyTorch extension, pip packages on first use, model folders (needs Slicer).
The analysis sequence and the worker thread live in the Lib (``PerfusionSegLib.analysis``, ``PerfusionSegLib.background``):
they import no Slicer module and the command line uses them too.
"""
