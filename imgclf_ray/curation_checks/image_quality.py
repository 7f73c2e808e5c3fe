"""cleanvision's per-image checks, decided in the predictor from the decode tasks' measures."""

from imgclf_ray.registry import CURATION_CHECKS, CurationCheck

CURATION_CHECKS.register("blurry")(CurationCheck("row", "blur_score", "<", "blur_threshold", measured=True))
CURATION_CHECKS.register("dark")(CurationCheck("row", "dark_score", "<", "dark_threshold", measured=True))
CURATION_CHECKS.register("overexposed")(CurationCheck("row", "light_score", "<", "overexposed_threshold",
                                                      measured=True, cleanvision="light"))
CURATION_CHECKS.register("low_information")(CurationCheck("row", "entropy", "<", "low_information_threshold",
                                                          measured=True))
CURATION_CHECKS.register("grayscale")(CurationCheck("row", "grayscale_score", "<", "grayscale_threshold",
                                                    measured=True))
# The aspect score comes from the decoded width and height (no pixel measure needed).
CURATION_CHECKS.register("odd_aspect")(CurationCheck("row", "aspect_score", "<", "odd_aspect_threshold",
                                                     cleanvision="odd_aspect_ratio"))
