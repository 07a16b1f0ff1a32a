"""``make run``'s process supervisor (``python -m tasks.supervisor``) and the private redis-server it
(and the test suite) starts."""
