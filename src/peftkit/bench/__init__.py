"""Benchmarks (imported only by the CLI): methods side by side with the hand-written peer pipeline, serving
latency and memory, and the FLOP count behind MFU."""
