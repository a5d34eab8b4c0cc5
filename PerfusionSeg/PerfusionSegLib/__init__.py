"""PerfusionSegLib: the pure-Python core of CardiacPerfusion (no Slicer imports).

Modules: series (data model), errors, readers, writers, preprocess, localise, phantom, quantification, aha, report,
networks, inference, metrics, cli. Import the modules you need; this package imports nothing heavy on its own.
"""
__version__ = "0.1.0"
