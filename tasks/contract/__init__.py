"""The job contract both sides share: payloads, errors, settings, logging, the model catalog, the
Celery app and the names of the records in Redis. Imports nothing else of the project."""
