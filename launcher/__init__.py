"""mnemos: launcher package."""
