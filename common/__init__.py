"""The genq contract: models, job states, Redis key names, settings, errors.

Imports neither fastapi, celery nor vllm (enforced by tests/test_import_boundaries.py).
"""
