"""cocotb testbenches: the RTL checked bit-exactly against the golden model."""
