"""The user-facing compiler: capture (torch.fx), the ATen frontend, the driver that runs
the pipeline, the runtime, the public API (``tilefx.compile`` / ``tilefx.load``), the
dynamo backend, artifacts and the command line. No optimization logic lives here."""
