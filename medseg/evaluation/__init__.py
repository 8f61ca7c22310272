"""Segmentation metrics and evaluation reports."""
