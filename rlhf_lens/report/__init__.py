"""Offline HTML reports: renders analysis results and run metadata to one self-contained file.

Assembles result objects it is given; imports no analysis or training module.
"""
