"""What the studies share: sweeps.py starts the launcher and reads run folders back, stats.py turns run
records into numbers, report.py writes a report's header, tables and PNGs where the report goes, and
templates.py fills the markdown templates that hold every report's prose."""

import matplotlib

matplotlib.use("Agg")  # the studies draw into files, never onto a display; set before any of them imports pyplot
