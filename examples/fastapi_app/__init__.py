"""A FastAPI app on poolkeeper's asyncio pool: ``uvicorn examples.fastapi_app.app:app``."""
