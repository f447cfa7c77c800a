"""fcos_lib: FCOS (Tian et al. 2019) built chapter by chapter in the course's notebooks.

Every module except `cli` is generated from a notebook (its banner names which one). The names
below are the ones a practitioner needs most; everything else is in the modules.
"""
__version__ = "0.1.0"

from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.inference import detect
from fcos_lib.model import FCOS

__all__ = ["FCOS", "VOCDataset", "collate_detection", "detect", "make_course_dataset", "__version__"]
