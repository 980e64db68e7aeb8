import jax

# Precision tests (orders, finite differences) need float64; float32 tests use explicit dtypes.
jax.config.update("jax_enable_x64", True)
