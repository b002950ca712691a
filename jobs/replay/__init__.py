"""Replay: rebuild the index into a new generation from the log (driver.py), with the
replay job (job.py) or the ingest job (jobs/pipeline.py), verified before it serves."""
