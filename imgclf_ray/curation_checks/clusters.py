"""Checks against the job's clusterer."""

from imgclf_ray.registry import CURATION_CHECKS, CurationCheck

# Farther from the clusterer's reference sample than its own curate.outlier_quantile of distances.
CURATION_CHECKS.register("outlier")(CurationCheck("row", "outlier_score", ">", None, needs="cluster"))
