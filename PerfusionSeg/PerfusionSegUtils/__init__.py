"""Slicer glue for the CardiacPerfusion modules (private to the extension, not part of the pip package).

- ``nodes``: MRML node <-> numpy / SliceSeries conversion and result-node creation (needs Slicer).
- ``dependencies``: torch through the PyTorch extension, pip packages on first use, model folders (needs Slicer).
- ``background``: worker thread + polling (no Slicer import; tested with pytest).
- ``analysis``: the sequence of Lib calls a panel runs on the worker (no Slicer import; tested with pytest).
"""
