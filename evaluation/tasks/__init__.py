"""Shipped task definitions (YAML). Not Python: this file only makes the folder package data."""
