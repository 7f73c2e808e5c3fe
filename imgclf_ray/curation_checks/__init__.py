"""The data-curation checks a curate section names (``curate.checks``): one table.

A row check is decided per image in the predictor from a score the decode tasks measured (the
score, the comparison, the curate field holding its threshold); a check on a new measure also adds
that measure to imgclf_ray/curation/measure.py and its column to the output schema. An archive
check needs every row of the run: its entry names the object whose scan, reduce, merge and
rewrite make its part of the archive-wide pass (an ``ArchiveCheck`` of imgclf_ray.curation.archive). A new check is a
line here (or a module of this package registering one the same way); tests/curation/ compares
every check with cleanvision's (or cleanlab's) definition.
"""

from imgclf_ray.registry import CURATION_CHECKS, CurationCheck

_ARCHIVE = "imgclf_ray.curation.archive"  # the archive checks' scan, reduce, merge and rewrite (by name: lazy)

TABLE = {
    # cleanvision's per-image checks.
    "blurry": CurationCheck("row", "blur_score", "<", "blur_threshold", measured=True),
    "dark": CurationCheck("row", "dark_score", "<", "dark_threshold", measured=True),
    "overexposed": CurationCheck("row", "light_score", "<", "overexposed_threshold", measured=True,
                                 cleanvision="light"),
    "low_information": CurationCheck("row", "entropy", "<", "low_information_threshold", measured=True),
    "grayscale": CurationCheck("row", "grayscale_score", "<", "grayscale_threshold", measured=True),
    # The aspect score comes from the decoded width and height (no pixel measure needed).
    "odd_aspect": CurationCheck("row", "aspect_score", "<", "odd_aspect_threshold", cleanvision="odd_aspect_ratio"),
    # Farther from the clusterer's reference sample than its own curate.outlier_quantile of distances.
    "outlier": CurationCheck("row", "outlier_score", ">", None, needs="cluster"),
    # Archive-wide: quartiles of the whole run; exact and near duplicates; cleanlab's confident
    # learning (per-class thresholds over the whole run's scores).
    "odd_size": CurationCheck("archive", archive=f"{_ARCHIVE}:ODD_SIZE"),
    "duplicate": CurationCheck("archive", measured=True, cleanvision="exact_duplicates",
                               archive=f"{_ARCHIVE}:DUPLICATE"),
    "near_duplicate": CurationCheck("archive", measured=True, cleanvision="near_duplicates",
                                    archive=f"{_ARCHIVE}:NEAR_DUPLICATE"),
    "label_issue": CurationCheck("archive", needs="labels", archive=f"{_ARCHIVE}:LABEL_ISSUE"),
}

for _name, _entry in TABLE.items():
    CURATION_CHECKS.register(_name)(_entry)
