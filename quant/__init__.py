"""Quantisation-aware training, integer-program export and the golden model."""
