"""``python -m imgclf_ray``: the imgclf command (what a Ray job's entry point runs)."""

from imgclf_ray.cli import main

main(prog_name="imgclf")
