"""The review loop: the images a human should review (``select``), their answers back into the
sink's human-labels table (``ingest``), and the archive's current labels (``labels``)."""
