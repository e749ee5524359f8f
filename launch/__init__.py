"""The launcher: config validation, process supervision, run folder, evaluation, reports."""
