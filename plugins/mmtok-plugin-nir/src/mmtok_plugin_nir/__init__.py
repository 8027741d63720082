"""mmtok-plugin-nir: NIR spectra, SpectralFM and classical calibration transfer."""
