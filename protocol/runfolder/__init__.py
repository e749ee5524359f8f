"""The run folder's files: push records and counters, updates.csv, status and summary JSON, parameter
snapshots. Written by the server and the sync baseline, read by the launcher, reports and experiments."""
