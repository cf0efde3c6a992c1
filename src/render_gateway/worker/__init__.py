"""The reference KServe v2 backend (needs the ``[worker]`` extra: torch, diffusers)."""
