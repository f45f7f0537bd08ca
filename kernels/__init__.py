"""Pallas GPU kernels (shipped as mor_jax.kernels)."""
