"""The Open Inference Protocol (KServe v2) as served by Triton: pure encoding and decoding."""
