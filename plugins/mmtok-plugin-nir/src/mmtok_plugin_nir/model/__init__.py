"""SpectralFM, component by component (one module each)."""
