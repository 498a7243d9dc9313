"""The application layer: question answering (engine), index versions and the delta (indexes),
background jobs and their queue (jobs), reader adapters (adapters), SQuAD evaluation and adapter
training, and the wiring of settings into components (loading). The HTTP layer and the CLI sit on
top of it; benchmarks use it as the in-process API."""
