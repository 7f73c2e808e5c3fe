"""The data-curation checks a curate section names (``curate.checks``), one module per kind.

A new row check over a measured score is one module here registering a CurationCheck (the score,
the comparison and the curate field holding its threshold); a check on a new measure also adds
that measure to imgclf_ray/curation/measure.py and its column to the output schema.
tests/curation/ compares every check with cleanvision's (or cleanlab's) definition.
"""
