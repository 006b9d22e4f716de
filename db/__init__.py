"""The results database: schema (`db.schema`, documented there) and the writer (`ResultsDB`)."""

from db.provenance import code_version
from db.schema import FINAL_STATUSES, STATUSES, Base, Metric, Run
from db.store import ResultsDB

__all__ = ["FINAL_STATUSES", "STATUSES", "Base", "Metric", "Run", "ResultsDB", "code_version"]
