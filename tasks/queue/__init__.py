"""The front's queue client: submit jobs, follow their events, read job records and presence.
Async, no torch; imported by ``api`` only."""
