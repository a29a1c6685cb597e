"""Plots (matplotlib, Agg backend): training curves, trace heatmaps, average effects, edit before/after."""

import matplotlib

matplotlib.use("Agg")
