"""Templated findings from a segmentation: the text side where no real report exists.

The shipped CT data (TotalSegmentator test volumes) carry no radiology reports. This module
turns what the data does carry — which labelled structures a (sub-)volume contains, how much of
it they fill, where they lie, which vertebrae it spans — into a short structured report:

    CT slab at the level of T12 to L1 showing liver, right kidney and bowel.
    liver: large portion, about 35% of the slab, right anterior part of the field.
    right kidney: moderate portion, about 10% of the slab, right posterior part of the field.

It is **templated text derived from model-predicted masks, not a radiologist's report**; every
README that uses it says so. Line 0 is the impression, each further line one finding (a
reasoning step) starting with its region group name (`mmtok_plugin_ct.text.step_regions`).
"""

import functools

import torch
from torch import Tensor

from mmtok_plugin_ct.regions import REGION_GROUPS, group_labels, totalseg_label_names

__all__ = ["findings_report"]

_GROUP_NAMES = list(REGION_GROUPS)


def _amount(frac: float) -> str:
    return "small" if frac < 0.05 else "moderate" if frac < 0.2 else "large"


def _position(center: Tensor, size: tuple[int, ...]) -> str:
    """Where a structure's centroid lies in the field: (h, w) = posterior→anterior, left→right."""
    ap = float(center[1]) / max(size[1] - 1, 1)
    lr = float(center[2]) / max(size[2] - 1, 1)
    side = "right" if lr > 0.6 else "left" if lr < 0.4 else "central"
    depth = "anterior" if ap > 0.6 else "posterior" if ap < 0.4 else "mid"
    return f"{side} {depth}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@functools.cache
def _axes(shape: tuple[int, ...]) -> tuple[Tensor, ...]:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return tuple(g.reshape(-1) for g in grids)


def _vertebra_levels(label_counts: Tensor) -> list[str]:
    names = totalseg_label_names()
    found = [names[v] for v in torch.nonzero(label_counts).flatten().tolist()
             if v in names and names[v].startswith("vertebrae_")]
    order = ["C", "T", "L", "S"]
    found = sorted(found, key=lambda n: (order.index(n[10]), int(n[11:])))
    return [n.removeprefix("vertebrae_") for n in found]


def findings_report(labels: Tensor, *, min_fraction: float = 0.01, max_findings: int = 6) -> str:
    """Report for one (sub-)volume of fine TotalSegmentator labels (d, h, w) (canonical layout)."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (d, h, w), found shape {tuple(labels.shape)}")
    flat = labels.reshape(-1).long().clamp(0, 255)
    groups = group_labels(flat)
    total = groups.numel()
    counts = torch.bincount(groups, minlength=len(_GROUP_NAMES))
    found = [(int(counts[g]) / total, g) for g in range(1, len(_GROUP_NAMES)) if counts[g] / total >= min_fraction]
    found.sort(key=lambda x: (-x[0], x[1]))
    found = found[:max_findings]
    levels = _vertebra_levels(torch.bincount(flat, minlength=256))
    level = "" if not levels else (f" at the level of {levels[0]}" if len(levels) == 1
                                   else f" at the level of {levels[0]} to {levels[-1]}")
    if not found:
        return f"CT slab{level} showing no labelled organ."
    lines = [f"CT slab{level} showing {_join([_GROUP_NAMES[g] for _, g in found])}."]
    # centroid of every group: per-axis coordinate sums / voxel counts
    sums = torch.stack([torch.bincount(groups, weights=a, minlength=len(_GROUP_NAMES))
                        for a in _axes(tuple(labels.shape))], 1)
    for frac, g in found:
        center = sums[g] / counts[g]
        pct = max(5, int(round(frac * 20)) * 5)
        lines.append(f"{_GROUP_NAMES[g]}: {_amount(frac)} portion, about {pct}% of the slab, "
                     f"{_position(center, tuple(labels.shape))} part of the field.")
    return "\n".join(lines)
