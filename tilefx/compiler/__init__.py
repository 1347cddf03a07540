"""The user-facing compiler: the top floor, where the stages are put in order.

``pipeline.py`` is the stage list (capture, lower, optimize, assemble; then per
binding: schedule, build, check; then tuned-or-default on the whole graph) and
every entry point calls it: ``api`` (``tilefx.compile``), ``dynamo``
(``torch.compile(backend="tilefx")``), the CLI verbs (``cli``, ``cli_tune``,
``cli_aot``, ``cli_cost``) and the artifact loader. Around it: ``capture``
(torch.fx), ``frontend`` + ``lowerings/`` (ATen to IR), ``options``
(``CompileOptions``), ``session`` (``CompileSession``: built kernels, tuners,
database handles; ``KernelBuilder``), ``records`` (typed ``CompileRecord``),
``pass_setup`` (the target backend's hooks for the passes), ``check`` (checked
builds), ``whole_graph`` (tuned vs default), ``runtime`` (``CompiledGraph``),
``cuda_graph``, ``mutation``, ``bounds``, ``artifact`` / ``artifact_load`` /
``signing``. No optimization logic lives here.
"""
