"""Datasets, preprocessing and calibration sample sets."""

from edgeres.data.preprocess import Preprocess

__all__ = ["Preprocess"]
