"""The HTTP app: webhook, read routes and dashboard, one app for Lambda and the local server."""

from scheduler.api.app import Application, Request, Response, Router, create_app
from scheduler.api.auth import Access, ApiAuth
from scheduler.api.dashboard import Dashboard
from scheduler.api.query_routes import query_routes

__all__ = [
    "Access",
    "ApiAuth",
    "Application",
    "Dashboard",
    "Request",
    "Response",
    "Router",
    "create_app",
    "query_routes",
]
