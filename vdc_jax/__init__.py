"""vdc_jax: see README.md."""
