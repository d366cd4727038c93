"""Host side: drives the accelerator (real board or simulated twin)."""
