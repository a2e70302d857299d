"""filterkd_ray: Filter-KD and its baselines as a Ray-distributed sweep system.

Ren, Guo & Sutherland, "Better Supervisory Signals by Observing Learning Paths", ICLR 2022.
"""
__version__ = "0.1.0"


class InputError(ValueError):
    """Bad user input (spec, data, paths). The CLI prints it as one line and exits 2."""
