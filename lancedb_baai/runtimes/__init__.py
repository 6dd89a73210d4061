"""The runtimes a model can run on, each behind one small interface (:mod:`.base`).

A runtime says whether it can run on this host and in which precisions, prepares a
model for itself (an export, or nothing), and runs a forward pass on padded int64 token
arrays. Like text-embeddings-inference's backends, a runtime never sees text: tokenizing,
batching, pooling and normalising live once in :mod:`lancedb_baai.engines`. torch
(:mod:`.torch`), ONNX Runtime (:mod:`.onnx`) and OpenVINO (:mod:`.openvino`) register
themselves here, in that order; :mod:`.remote` is the client of a ``lancedb-baai serve``
server, which runs its own engines and so takes text.
"""

from . import torch  # noqa: F401  (registers "torch")
from . import onnx  # noqa: F401,I001  (registers "onnx")
from . import openvino  # noqa: F401,I001  (registers "openvino")
