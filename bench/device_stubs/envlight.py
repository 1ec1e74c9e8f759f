"""Import-only stand-in (PBR materials are not used by Portrait3D)."""
