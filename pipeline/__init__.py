"""Data logic: readers, entropy and patch stages, manifest, calibration (may use Ray; blt_model may not)."""
