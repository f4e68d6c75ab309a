"""The `crossinfer serve` core: a KServe v2 / Triton-compatible model server.

Per-model dynamic batching lives in `batcher`; the HTTP and gRPC front ends build on it.
"""
