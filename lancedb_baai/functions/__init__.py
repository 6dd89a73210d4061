"""What LanceDB sees: the registered functions and rerankers, configuration only.

``local-baai``, ``local-baai-rerank``, ``local-baai-m3-colbert`` and the reranker adapters
hold strings, numbers and flags (they pickle and round-trip through a table's metadata);
they find their engine in the per-process cache on each call.
"""
