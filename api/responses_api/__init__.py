"""The OpenAI Responses API (``/v1/responses``): the response object, its semantic stream events,
and the service the routes call (stored, background and resumable responses)."""
