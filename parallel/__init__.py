"""mnemos: parallel package."""
