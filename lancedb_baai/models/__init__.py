"""A model's files and what this machine keeps about them.

Hub resolution and download locks (:mod:`.hub`), the catalog of known bge models
(:mod:`.catalog`), the weights fingerprint (:mod:`.fingerprint`), who may run remote code
(:mod:`.trust`), the export cache (:mod:`.exports`) and the fidelity gate's set, measure
and records (:mod:`.fidelity`). Nothing here runs a model: it reads and writes files.
"""
