"""The queue between the front and the model workers, split by role so that no package imports one
that imports it back:

* ``tasks.contract``   the job contract both sides share (payloads, errors, settings, records)
* ``tasks.queue``      the front's queue client (imported by ``api``)
* ``tasks.worker``     the worker process (imports ``handlers``)
* ``tasks.supervisor`` ``make run``'s process supervisor
"""
