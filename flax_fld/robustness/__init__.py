"""Robust evaluation beyond PGD: the strong attack (APGD-style, targeted runs) and its sanity checks."""
