"""threestudio-portrait3d components."""
