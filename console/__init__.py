"""The web console: static files only. It owns no data and no rules; every screen calls
the public v1 REST API with the signed-in user's token."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
