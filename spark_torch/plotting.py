"""Plotting helpers shared by the command-line jobs (patterns, demo, compare): figures go to files only."""

from __future__ import annotations


def agg_pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
