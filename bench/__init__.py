"""normbench: when batch normalization helps, when it hurts, and what to use instead."""
