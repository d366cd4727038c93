"""Amaranth gateware of the shift-network engine, SoC and board tops."""
