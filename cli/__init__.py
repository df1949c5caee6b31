"""The ``dgm-pyro`` command-line interface (click). It parses, calls :mod:`dgm_pyro`, and prints."""
