"""Workers: tasks, compressors, the worker half of error feedback, the worker loop."""
