"""Regenerate the medimg example's ``data/`` and ``manifest.json`` from the shared real data.

    python examples/medimg/make_manifest.py [--shared ../shared/data]

The example mixes every input kind the plugin reads: DICOM (single-frame CT / MR / NM, a
10-frame MR as 10 samples, JPEG 2000 ultrasound), PNG / JPEG (fundus, IHC pathology, MedMNIST
dermatoscopy / pathology / breast ultrasound), an Aperio SVS slide region (written here with
tifffile from a region of OpenSlide's CMU-1 test slide, JPEG tiles, the original's MPP) and NIfTI
slices of an MR volume. Provenance and licences: data/README.md.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
COPY = {  # shared path -> example file
    "medimg_multi/CT_small.dcm": "ct_small.dcm",
    "medimg_multi/MR_small.dcm": "mr_small.dcm",
    "medimg_multi/emri_small.dcm": "emri_small.dcm",
    "medimg_multi/US1_J2KR.dcm": "us1_j2kr.dcm",
    "medimg_multi/JPEG2000_UNC.dcm": "nm_bone_scan.dcm",
    "medimg_multi/microaneurysms.png": "fundus_microaneurysms.png",
    "medimg_multi/anatomical.nii": "mr_anatomical.nii",
    "medimg_multi/RG3_J2KI.dcm": "xr_leg_rg3.dcm",
    "medimg_2d/original_jpeg/dermamnist_224_rgb_Class1.jpeg": "derma_class1.jpeg",
    "medimg_2d/original_jpeg/dermamnist_224_rgb_Class5.jpeg": "derma_class5.jpeg",
    "medimg_2d/original_jpeg/pathmnist_224_rgb_Class4.jpeg": "path_class4.jpeg",
    "medimg_2d/original_jpeg/pathmnist_224_rgb_Class7.jpeg": "path_class7.jpeg",
    "medimg_2d/original_jpeg/breastmnist_224_gray_Class1.jpeg": "breast_us_class1.jpeg",
}
#: a 1024 x 1024 px region of the CMU-1 slide region (level 0, 0.499 um/px)
SVS_REGION = (800, 400, 1024, 1024)


def write_svs(source: Path, out: Path) -> None:
    """An Aperio-style tiled JPEG TIFF of one region of ``source`` (base level + a 2x level)."""
    with tifffile.TiffFile(source) as tif:
        base = tif.pages[0].asarray()
        description = tif.pages[0].description
    r, c, h, w = SVS_REGION
    region = np.ascontiguousarray(base[r:r + h, c:c + w])
    mpp = next((p.split("=")[1].strip() for p in description.split("|") if p.strip().startswith("MPP")), "0.499")
    head = f"Aperio Image Library mmtok example\r\n{w}x{h} region of CMU-1|MPP = {mpp}"
    with tifffile.TiffWriter(out) as tw:
        tw.write(region, tile=(256, 256), compression="jpeg", photometric="rgb", description=head)
        tw.write(region[::2, ::2].copy(), tile=(256, 256), compression="jpeg", photometric="rgb",
                 description=f"Aperio Image Library mmtok example\r\n{w // 2}x{h // 2} -> thumbnail")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data")
    args = p.parse_args()
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    for src, dst in COPY.items():
        shutil.copyfile(args.shared / src, data / dst)
    write_svs(args.shared / "medimg_multi" / "cmu_small_region.svs", data / "he_cmu1_region.svs")

    def entry(path, **options):
        e = {"path": f"data/{path}"}
        if options:
            e["options"] = options
        return e

    samples = [("ct_small", entry("ct_small.dcm")), ("mr_small", entry("mr_small.dcm")), ("xr_leg", entry("xr_leg_rg3.dcm")),
               ("us1", entry("us1_j2kr.dcm")), ("nm_bone_scan", entry("nm_bone_scan.dcm"))]
    samples += [(f"emri_frame{k}", entry("emri_small.dcm", frame=k)) for k in range(10)]
    samples += [("fundus_microaneurysms", entry("fundus_microaneurysms.png", imaging_modality="fundus")),
                ("derma_class1", entry("derma_class1.jpeg", imaging_modality="dermatoscopy")),
                ("derma_class5", entry("derma_class5.jpeg", imaging_modality="dermatoscopy")),
                ("path_class4", entry("path_class4.jpeg", imaging_modality="pathology")),
                ("path_class7", entry("path_class7.jpeg", imaging_modality="pathology")),
                ("breast_us_class1", entry("breast_us_class1.jpeg", imaging_modality="ultrasound"))]
    samples += [(f"he_region_{i}", entry("he_cmu1_region.svs", region=[r, c, 256, 256]))
                for i, (r, c) in enumerate([(0, 0), (0, 512), (512, 256), (768, 768)])]
    samples += [(f"mr_anatomical_slice{k}", {"path": "data/mr_anatomical.nii", "reader": "nifti-slice",
                                             "options": {"slice": k, "imaging_modality": "mr"}})
                for k in (8, 12, 16)]
    manifest = {"version": 1, "samples": [{"id": sid, "modalities": {"medical_image": e}} for sid, e in samples]}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(samples)} samples to {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()
