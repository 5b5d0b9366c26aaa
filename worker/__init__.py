"""genq worker: a Celery consumer hosting one vLLM AsyncLLM. The only package importing vllm."""
