"""The worker process (``python -m tasks.worker --model VENDOR/MODEL``): Celery tasks, the runtime
around the one loaded model, and the engine thread. The only part of ``tasks`` that imports
``handlers`` (hence torch)."""
