"""The package's server inside your own ASGI app (or simply run `lancedb-baai serve`).

Run with: LANCEDB_BAAI_EMBED=BAAI/bge-small-en-v1.5 uvicorn examples.server:app --port 8000
"""

import os

from lancedb_baai.serve import ModelOptions, ServeConfig, create_app

app = create_app(ServeConfig(models=[
    ModelOptions(kind="embed", name=os.environ.get("LANCEDB_BAAI_EMBED", "BAAI/bge-small-en-v1.5")),
    ModelOptions(kind="rerank", name=os.environ.get("LANCEDB_BAAI_RERANK", "BAAI/bge-reranker-base")),
], admin_token=os.environ.get("LANCEDB_BAAI_ADMIN_TOKEN")))
