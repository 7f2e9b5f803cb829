"""Evaluation that only computes: clean and PGD accuracy per class, metrics, statistics over seeds, calibration,
saliency, the floors."""
