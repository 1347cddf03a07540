"""The learned hardware cost model (XGBoost over schedule features): not written yet.

Until it exists the tuner ranks candidates with ``tilefx.autotune.analytical``.
"""
