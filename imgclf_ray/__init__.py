"""imgclf-ray."""
