"""threestudio-portrait3d exporters."""
