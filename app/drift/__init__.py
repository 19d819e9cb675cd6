"""Streaming embedding-drift detection (no Kafka/Faust here: the worker wires it in).

>>> from app.drift import DriftMonitor, DriftConfig, DriftAlert, encode_alert, decode_alert
"""
from .alert import AlertKind, DriftAlert, PartitionRange, Severity, SignalStats, Trigger, decode_alert, encode_alert
from .detectors import Alarm, DetectorBank, DetectorSpec
from .monitor import DEFAULT_BLOCK, DEFAULT_DETECTORS, DriftConfig, DriftMonitor
from .reference import MonitorKey, Reference, learn_reference
from .signals import SignalBasis, fit_basis

__all__ = [
    "AlertKind", "DriftAlert", "PartitionRange", "Severity", "SignalStats", "Trigger", "decode_alert",
    "encode_alert", "Alarm", "DetectorBank", "DetectorSpec", "DEFAULT_BLOCK", "DEFAULT_DETECTORS",
    "DriftConfig", "DriftMonitor", "MonitorKey", "Reference", "learn_reference", "SignalBasis", "fit_basis",
]
