"""tilefx benchmarks: the model zoo (``benchmarks.models``) and the comparison script (``run.py``)."""
