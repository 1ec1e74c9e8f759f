"""Import-only stand-in for nvdiffrast on CPU-only machines (see ``nvdiffrast.torch``)."""
