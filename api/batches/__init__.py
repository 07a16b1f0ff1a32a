"""The Batch API: files (``/v1/files``) and batches (``/v1/batches``) run as jobs on the queue.

``service.py`` and ``files.py`` are what the routes call; ``runner.py`` (an asyncio task in each API
process, one process per batch under a lease) drives each batch through ``driver.py`` (validate,
keep its lines flowing, stop) and ``output.py`` (the output and error files); ``lines.py`` turns a
line into its job and a finished job into its output line. State lives in Redis
(``tasks/queue/batches.py``, ``tasks/queue/files.py``).
"""
