"""mcla_jax: see README.md."""
