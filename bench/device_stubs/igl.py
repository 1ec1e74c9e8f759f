"""Import-only stand-in for libigl (threestudio.utils.ops imports three functions)."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("libigl is not installed on the device (import-only stand-in)")


fast_winding_number_for_meshes = point_mesh_squared_distance = read_obj = _unavailable
