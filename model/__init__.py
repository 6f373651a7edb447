"""mnemos: model package."""
