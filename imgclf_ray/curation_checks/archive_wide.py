"""Checks that need every row of the run: the archive-wide pass (imgclf_ray.curation.archive)."""

from imgclf_ray.registry import CURATION_CHECKS, CurationCheck

CURATION_CHECKS.register("odd_size")(CurationCheck("archive"))  # quartiles of the whole run
CURATION_CHECKS.register("duplicate")(CurationCheck("archive", measured=True, cleanvision="exact_duplicates"))
CURATION_CHECKS.register("near_duplicate")(CurationCheck("archive", measured=True, cleanvision="near_duplicates"))
# cleanlab's confident learning: per-class thresholds over the whole run's scores.
CURATION_CHECKS.register("label_issue")(CurationCheck("archive", needs="labels"))
