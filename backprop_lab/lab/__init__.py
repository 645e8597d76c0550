"""The lab on run folders (files only): compare, report, statistics and the studies."""
