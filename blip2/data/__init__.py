"""Datasets for training and evaluation: formats users bring, a synthetic one, downloads.

Torch-free: records are plain dataclasses pointing at image files on disk.
"""
