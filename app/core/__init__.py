"""Domain shared by the API and the worker: settings, store, job specs and queue. No fastapi, no torch."""
