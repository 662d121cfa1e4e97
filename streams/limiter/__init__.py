"""The global limiter: budget arithmetic (book), the single coordinator, and the worker-side client."""
