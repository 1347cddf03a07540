"""Code generation: a ``kernel`` op + a ``Schedule`` + a ``Target`` -> a callable.

``target.py`` (what we compile for) and ``schedule.py`` (knob records) are shared;
``tvm/`` builds CPU kernels through LLVM, ``triton/`` GPU kernels. Both expose
``build_kernel``, ``default_schedule`` and ``schedule_space`` and are imported
only when used, so this package pulls in neither TVM nor Triton.
"""
