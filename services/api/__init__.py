"""FastAPI routers, one per resource; ``services.app.create_app`` includes them."""
