"""Optimization passes, one per file, each producing a new model artefact with its provenance."""
