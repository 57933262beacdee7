"""SiLa (Siamese Labels Auxiliary Learning) in JAX/Flax."""
