"""Crop, normalise and resample cases as a configuration's plan says, reversibly."""
