"""Differential tests: tilefx against eager PyTorch on drawn programs and schedules (a package, so
its conftest does not shadow the ``conftest`` module other test folders import helpers from)."""
