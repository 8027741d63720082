"""What mmtok-plugin-hsi registers (entry point ``hsi`` in group ``mmtok``)."""

from mmtok import BundleSpec, CodecSpec, HeadSpec, ImageCodec, ReaderSpec, SampleCheckSpec, hookimpl

from mmtok_plugin_hsi.cli import COMMAND
from mmtok_plugin_hsi.codecs import HSICubeCodec
from mmtok_plugin_hsi.modalities import AUXILIARIES, HSICube, check_coregistered
from mmtok_plugin_hsi.readers import read_envi, read_mat

FSQ = {"kind": "fsq", "levels": [8, 5, 5, 5]}
#: SpectralGPT's tokens: 12 bands x 8 x 8 px; AVIRIS range (400–2500 nm) on 192 bands, 16 x 16 px chips
CUBE = {"size": [192, 16, 16], "patch": [12, 8, 8], "wavelength_range_nm": [400.0, 2500.0]}
#: per-pixel spectra: 1 x 1 px cubes, one token per 12 bands
PIXEL = {"size": [192, 1, 1], "patch": [12, 1, 1], "wavelength_range_nm": [400.0, 2500.0], "spatial": "center"}
#: auxiliary images on the cube's 16 x 16 chip grid, one token per 8 x 8 px
AUX = {"channels": 1, "size": [16, 16], "patch": [8, 8], "quantizer": FSQ}


@hookimpl
def mmtok_modalities():
    return [HSICube, *AUXILIARIES.values()]


@hookimpl
def mmtok_codecs():
    specs = [
        CodecSpec("hsi-cube-fsq", "hsi_cube", HSICubeCodec, {**CUBE, "quantizer": FSQ},
                  "HSI cube: resample to 192 bands over 400–2500 nm (valid bands only), 16 x 16 px chips; one "
                  "FSQ token of 1000 per 12-band x 8 x 8 px patch (64)"),
        CodecSpec("hsi-cube-continuous", "hsi_cube", HSICubeCodec, {**CUBE, "quantizer": {"kind": "continuous"}},
                  "as hsi-cube-fsq, continuous 8-d latent per patch"),
        CodecSpec("hsi-pixel-fsq", "hsi_cube", HSICubeCodec, {**PIXEL, "quantizer": FSQ},
                  "per-pixel spectra (1 x 1 px cubes, or the centre pixel of a chip): one FSQ token per 12 bands of the 192-band grid (16)"),
    ]
    for name, cls in AUXILIARIES.items():
        specs.append(CodecSpec(f"{name.replace('_', '-')}-fsq", name, ImageCodec, dict(AUX),
                               f"{cls.__name__} on the cube's 16 x 16 px grid: one FSQ token of 1000 per 8 x 8 px "
                               "(set channels for RGB / attribute profiles)"))
    return specs


@hookimpl
def mmtok_readers():
    return [
        ReaderSpec("matlab", (".mat",), read_mat,
                   "MATLAB .mat (v5 via scipy, v7.3 via h5py): every numeric variable by name"),
        ReaderSpec("envi", (".hdr",), read_envi,
                   "ENVI header + binary image (spectral): reflectance (bands, h, w), wavelengths, bad band list"),
    ]


def _hsi_guidance_head(**config):
    # torch networks load only when a run builds the head, not whenever plugins are listed
    from mmtok_plugin_hsi.model.head import HSIGuidanceHead

    return HSIGuidanceHead(**config)


@hookimpl
def mmtok_heads():
    return [HeadSpec("hsi-guidance", _hsi_guidance_head,
                     "HSI cube stream <-> each auxiliary image stream, InfoNCE between HSI-only and aux-only "
                     "encoder passes of the shared transformer (missing auxiliaries skipped)")]


@hookimpl
def mmtok_bundles():
    return [BundleSpec("hsi-guided", ("tok_hsi_cube", *(f"tok_{n}" for n in AUXILIARIES)), ("hsi-guidance",),
                       "HSI cubes as the primary stream, IR / AF / thickness / elevation images as guidance, "
                       "aligned contrastively (mmtok-plugin-hsi); guided SpectralGPT is the plugin's own model")]


def _coregistration_check(aux_name: str):
    def check(modalities):
        check_coregistered(modalities["hsi_cube"], modalities[aux_name])
    return check


@hookimpl
def mmtok_sample_checks():
    return [SampleCheckSpec(f"{name.replace('_', '-')}-on-cube-grid", ("hsi_cube", name), _coregistration_check(name),
                            f"a {cls.__name__} must lie on its HSI cube's pixel grid")
            for name, cls in AUXILIARIES.items()]


@hookimpl
def mmtok_commands():
    return [COMMAND]
