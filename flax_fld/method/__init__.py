"""The paper's method: the losses (Eq. 3-5), the per-class epsilon/beta calibration (Eq. 1-2), the TRADES
attack (the inner max) and the combined objective on a batch."""
