"""petseg's FastAPI service. The ASGI app is ``app.main:app``; ``app.main.create_app`` builds one for tests."""
