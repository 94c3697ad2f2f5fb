"""Analyses that read run directories (attribution, probes, policy diffs, ...). They read runs only."""
