"""Plots: training curves, trace heatmaps, average effects, edit before/after.

Figures are built with matplotlib's object-oriented API (`matplotlib.figure.Figure`) and saved with the Agg
renderer, so the library never changes the global backend (a notebook's inline backend keeps working).
"""
