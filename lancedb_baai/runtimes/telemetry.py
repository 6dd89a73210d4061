"""Quiet imports of other libraries: what the package turns off for its own use, and says so.

``import openvino`` sends a usage event to Google Analytics from a forked helper process
(``openvino.tools.ovc`` through the ``openvino-telemetry`` package) unless the machine's
opt-in file (``~/intel/openvino_telemetry``) says no. In a process that has imported
LanceDB, that fork makes LanceDB warn "fork support is experimental" (RuntimeWarning),
once per process; and a library that loads a model should not report its users' imports.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

OPENVINO_TELEMETRY = "openvino_telemetry"


def openvino_telemetry_off() -> bool:
    """Turn OpenVINO's telemetry off for this process, before the package first imports OpenVINO.

    This is documented behaviour of lancedb_baai: the package calls it right before it
    imports ``openvino`` (the ``"openvino"`` backend, ``"auto"`` trying it, an export).
    It marks the ``openvino_telemetry`` module as absent in this process
    (``sys.modules[name] = None``, after which ``import openvino_telemetry`` raises
    ``ImportError``), so OpenVINO's model conversion and NNCF fall back to the no-op
    telemetry stubs they ship for when that package is not installed: no event is sent,
    no helper process is forked, and no client id is written. The machine's opt-in file
    is neither read nor written, and other processes are not affected.

    It changes nothing when ``openvino_telemetry`` is already imported: the process (the
    application, or a library imported before this one) has made its choice, and its
    import event has already gone. To keep OpenVINO's telemetry in a process that uses
    this package, import ``openvino`` before the package loads a model.

    Returns
    -------
    bool
        True if OpenVINO's telemetry is off in this process (now or by an earlier call),
        False if ``openvino_telemetry`` was imported before and stays as it is.
    """
    if OPENVINO_TELEMETRY in sys.modules:
        return sys.modules[OPENVINO_TELEMETRY] is None
    sys.modules[OPENVINO_TELEMETRY] = None  # type: ignore[assignment]
    logger.debug("OpenVINO telemetry is off in this process (openvino_telemetry marked absent)")
    return True
