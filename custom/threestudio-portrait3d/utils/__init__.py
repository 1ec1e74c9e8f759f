"""Helpers for the threestudio-portrait3d extension."""
