"""A FastAPI service that embeds and reranks with models preloaded before the workers fork.

Run with:
    LANCEDB_BAAI_EMBED=BAAI/bge-small-en-v1.5 LANCEDB_BAAI_RERANK=BAAI/bge-reranker-base \\
    LANCEDB_BAAI_ADMIN_TOKEN=change-me \\
    gunicorn --preload -w 4 -k uvicorn.workers.UvicornWorker examples.server:app

With ``--preload`` gunicorn imports this module once in the master: the models load there,
and the forked workers share the weights copy-on-write (0 loads per worker on CPU). On CUDA
each worker loads its own copy on first use, since a CUDA context does not survive fork.
"""

from __future__ import annotations

import hmac
import os

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

import lancedb_baai

EMBED_MODEL = os.environ.get("LANCEDB_BAAI_EMBED", "BAAI/bge-small-en-v1.5")
RERANK_MODEL = os.environ.get("LANCEDB_BAAI_RERANK", "BAAI/bge-reranker-base")
ADMIN_TOKEN = os.environ.get("LANCEDB_BAAI_ADMIN_TOKEN", "")

embedder = lancedb_baai.BAAIEmbeddings(name=EMBED_MODEL)
reranker = lancedb_baai.BAAIRerankFunction(name=RERANK_MODEL)
if os.environ.get("LANCEDB_BAAI_PRELOAD", "1") == "1":
    lancedb_baai.preload(EMBED_MODEL)
    lancedb_baai.preload(RERANK_MODEL, kind="rerank")

app = FastAPI(title="lancedb_baai service")


class EmbedRequest(BaseModel):
    texts: list[str]
    query: bool = False


class RerankRequest(BaseModel):
    query: str
    passages: list[str]


class SwapRequest(BaseModel):
    new_name: str
    kind: str = "embed"
    allow_dims_change: bool = False


@app.post("/embed")
def embed(request: EmbedRequest) -> dict:
    if request.query:
        vectors = [embedder.compute_query_embeddings(t)[0] for t in request.texts]
    else:
        vectors = embedder.generate_embeddings(request.texts)
    return {"vectors": [v.tolist() for v in vectors]}


@app.post("/rerank")
def rerank(request: RerankRequest) -> dict:
    try:
        return {"scores": reranker.score(request.query, request.passages)}
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@app.post("/admin/swap")
def swap(request: SwapRequest, x_admin_token: str = Header(default="")) -> dict:
    """Hot-swap the model behind one kind of function, in this worker, without dropping requests."""
    if not ADMIN_TOKEN or not hmac.compare_digest(x_admin_token, ADMIN_TOKEN):
        raise HTTPException(status_code=403, detail="admin token required")
    name = EMBED_MODEL if request.kind == "embed" else RERANK_MODEL
    try:
        return lancedb_baai.swap(name, request.new_name, kind=request.kind,
                                 allow_dims_change=request.allow_dims_change)
    except (OSError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=f"swap failed, old model still serving: {exc}") from exc


@app.get("/admin/engines")
def engines() -> list[dict]:
    return list(lancedb_baai.cache_info())
