"""The dashboard: server-rendered pages (Jinja2) under ``/ui``, served by the API process
itself, behind the same API keys (a login form sets an HttpOnly session cookie)."""
