"""Shared code. Bottom floor (imported by attacks/ and models/, importing neither): argtypes, precision, modes, flow,
eot, distributed, errors. Above them: runtime (run set-up), datasets (definitions and integrity), data (transforms and
loaders), losses (and the objectives of --loss), regularizers, awp, checkpoint, results, cli, the training loop, the
evaluation pipeline, the GSeM training schedule, tables and plots."""
