"""Reporting: the evidence JSON (atomic, reproducible), the HTML report, its plots, and the documented
rank that combines evidence families into one verdict per reference.
"""

