"""Evaluation: the protocol (``protocol.py``), the LLM's scoring (``scoring.py``), metrics with
bootstrap intervals (``metrics.py``) and paired comparisons and tables (``report.py``)."""
