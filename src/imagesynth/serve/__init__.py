"""The studio: a FastAPI app and static page over a durable SQLite job queue and a worker process."""
