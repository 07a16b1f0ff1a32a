"""The built-in web page: a chat playground and a live status view, served by the API itself.

``static/`` holds plain HTML, CSS and JavaScript modules, committed as they are served: no build
step, no Node.js, nothing fetched from the internet (the page works offline).
"""

from .routes import router

__all__ = ["router"]
