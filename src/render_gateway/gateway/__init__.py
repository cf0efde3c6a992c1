"""The gateway: the public HTTP API over the job store, the scheduler and the backend pool."""
