"""Datasets, preprocessing and calibration sample sets."""

from edgeres.data.folders import load_npz, save_npz
from edgeres.data.imagenet import imagenet_labels, load_imagenet_samples
from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.data.specs import DataSet, DataSpec, load_spec

__all__ = ["IMAGENET", "DataSet", "DataSpec", "Preprocess", "imagenet_labels",
           "load_imagenet_samples", "load_npz", "load_spec", "save_npz"]
