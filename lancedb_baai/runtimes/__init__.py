"""The runtimes a model can run on, each behind one small interface.

A runtime says whether it can run on this host and in which precisions, prepares a
model for itself (an export, or nothing), and runs a forward pass on padded int64 token
arrays. Like text-embeddings-inference's backends, a runtime never sees text: tokenizing,
batching, pooling and normalising live once in :mod:`lancedb_baai.engines`.
"""
