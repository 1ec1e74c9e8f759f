"""Import-only stand-in (threestudio's notebooks use IPython; launch.py does not)."""
