"""Trained models on disk: the one reader (`load_trained`, a training workdir or an export folder) and the export
to the diffusers layout (`export.write_export`)."""
