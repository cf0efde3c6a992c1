"""Talking to inference backends (the reference worker, or Triton) over KServe v2."""
