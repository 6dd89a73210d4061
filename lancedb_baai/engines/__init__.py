"""Engines: texts in, vectors or scores out, on any runtime; and the per-process cache of them.

An engine tokenizes, plans length-sorted batches, pads them, calls its runtime and pools,
normalises or applies the sigmoid once, whatever the runtime. The kinds of engine (embed,
rerank, bge-m3) are one registry; the cache loads each engine once per process.
"""
