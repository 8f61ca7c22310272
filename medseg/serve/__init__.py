"""The REST server (medseg serve): jobs on disk, one worker, FastAPI routes."""
