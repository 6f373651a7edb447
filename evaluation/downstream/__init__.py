"""Downstream tasks for Hopfield layers and Slot Attention."""
