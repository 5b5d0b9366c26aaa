"""genq API: FastAPI routes, SSE relay, auth, limits. Never imports vllm, torch or worker."""
