"""Data curation: per-image quality measures (in the decode tasks) and archive-wide checks (a second,
distributed pass over the staged output before it is committed)."""
