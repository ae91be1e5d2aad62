"""Sensor drivers: each is one small module with a config model and a sample source."""
