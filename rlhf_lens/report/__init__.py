"""Offline HTML reports: renders analysis results and run metadata to one self-contained file.

Assembles result objects it is given; imports no analysis or training module (`cli.py` wires them).
"""

from rlhf_lens.report.compare import PairedSection, render_comparison
from rlhf_lens.report.page import Entry, Section, anchor_for, render_page, render_report, write_report

__all__ = ["Entry", "PairedSection", "Section", "anchor_for", "render_comparison", "render_page", "render_report", "write_report"]
