"""The HTTP app: webhook and read routes, one app for Lambda and the local server."""

from scheduler.api.app import Application, Request, Response, Router, create_app
from scheduler.api.query_routes import query_routes

__all__ = ["Application", "Request", "Response", "Router", "create_app", "query_routes"]
