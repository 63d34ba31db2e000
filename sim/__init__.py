"""The PyBullet backend: simulated arms and cameras behind the same HAL contract as real ones."""
