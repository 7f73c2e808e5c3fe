"""The spec sections, by topic; import them from ``imgclf_ray.spec``."""
