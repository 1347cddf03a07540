"""Code generation: a ``kernel`` op + a ``Schedule`` + a ``Target`` -> a callable.

Shared by both code generators: ``target.py`` (what we compile for),
``backend.py`` (the ``Backend`` interface; ``Target.backend()`` returns the one for
a target), ``schedule.py`` (knob records), ``space.py`` (``SearchSpace``, the extern
candidate), ``measure.py`` (workloads, build and measure results, the library
kernel, the TVM builder pool and isolated runner), ``workers.py`` (their
processes) and ``timing.py`` (every timer). ``tvm/`` builds CPU kernels through
LLVM, ``triton/`` GPU kernels; each exports its ``Backend`` from ``backend.py``
and is imported only when used, so this package pulls in neither TVM nor Triton.

Floor: above ``ir`` and ``passes`` (a backend hands the passes their hooks), below
``storage``. Nothing outside this folder asks which kind a target is.
"""
