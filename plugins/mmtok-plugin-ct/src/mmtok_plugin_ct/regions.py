"""Anatomical region groups: TotalSegmentator's 117 "total" labels folded into 20 regions.

The CT encoder (``num_regions=20`` in the seed) and the mask codec work on these groups; the
fine labels stay in `AnatomyMask` files. Group 0 is background (label 0 and anything unlisted).
"""

import functools
import json
from importlib import resources

import numpy as np
import torch
from torch import Tensor

__all__ = ["REGION_GROUPS", "NUM_REGIONS", "totalseg_label_names", "group_lookup", "group_labels"]

#: group name -> TotalSegmentator label names (prefix match on the label name)
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "background": (),
    "liver": ("liver",),
    "spleen": ("spleen",),
    "right kidney": ("kidney_right", "kidney_cyst_right"),
    "left kidney": ("kidney_left", "kidney_cyst_left"),
    "gallbladder": ("gallbladder",),
    "stomach": ("stomach",),
    "pancreas": ("pancreas",),
    "adrenal glands": ("adrenal_gland",),
    "lungs": ("lung_",),
    "heart": ("heart", "atrial_appendage", "pulmonary_vein"),
    "aorta and arteries": ("aorta", "brachiocephalic_trunk", "subclavian", "common_carotid", "iliac_artery"),
    "veins": ("superior_vena_cava", "inferior_vena_cava", "portal_vein", "brachiocephalic_vein",
              "iliac_vena"),
    "bowel": ("small_bowel", "duodenum", "colon", "esophagus"),
    "urinary bladder and prostate": ("urinary_bladder", "prostate"),
    "spine": ("vertebrae_", "sacrum", "spinal_cord"),
    "ribs and sternum": ("rib_", "sternum", "costal_cartilages", "clavicula", "scapula"),
    "back muscles": ("autochthon", "iliopsoas", "gluteus"),
    "limb and pelvic bones": ("humerus", "femur", "hip_"),
    "head and neck": ("brain", "skull", "thyroid", "trachea"),
}
NUM_REGIONS = len(REGION_GROUPS)


@functools.cache
def totalseg_label_names() -> dict[int, str]:
    """TotalSegmentator "total" label id -> name (117 classes; shipped as package data)."""
    text = resources.files("mmtok_plugin_ct").joinpath("data/totalseg_total_labels.json").read_text()
    return {int(k): v for k, v in json.loads(text).items()}


@functools.cache
def _lookup_array() -> np.ndarray:
    names = totalseg_label_names()
    table = np.zeros(256, dtype=np.int64)
    groups = list(REGION_GROUPS.items())
    for label, name in names.items():
        for g, (_, prefixes) in enumerate(groups):
            if any(name.startswith(p) for p in prefixes):
                table[label] = g
                break
    return table


@functools.cache
def _lookup_tensor() -> Tensor:
    return torch.from_numpy(_lookup_array().copy())


def group_lookup() -> Tensor:
    """(256,) long: label id -> region group id."""
    return _lookup_tensor().clone()


def group_labels(labels: Tensor) -> Tensor:
    """Fine TotalSegmentator ids (any shape, values in [0, 255]) -> region group ids."""
    return _lookup_tensor().to(labels.device)[labels.long().clamp(0, 255)]
