"""Ray preprocessing: entropy and patch stages, threshold calibration, the driver, re-patching."""
