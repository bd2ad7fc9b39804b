"""The sandbox HIS: an ASMX-style SOAP service over SQLite state, with fault injection (docs/SANDBOX_HIS.md)."""

from sandbox.his.faults import FaultBook, FaultRule
from sandbox.his.state import HisError, HisState

__all__ = ["FaultBook", "FaultRule", "HisError", "HisState"]
