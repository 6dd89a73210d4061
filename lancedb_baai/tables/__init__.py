"""Work on LanceDB tables: re-embedding, filling missing vectors, the one-commit switch, checkpoints.

Lance schema surgery (:mod:`.lance_schema`), resumable checkpoints (:mod:`.checkpoint`),
the fragment-by-fragment switch of a vector column (:mod:`.switch`), and the public
:func:`~lancedb_baai.reembed` family (:mod:`.reembed`).
"""
