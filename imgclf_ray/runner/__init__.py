"""Running a job: spec -> Ray Data plan -> committed output.

    manifest ──► LoadStage (CPU tasks: read, decode, condition) ──► PredictStage (actor pool)
             ──► write_parquet (staging) ──► checks ──► commit (manifest, _SUCCESS)

``job`` runs it top to bottom (list, select, plan, build, execute, check, commit); ``plan`` decides
the run once (RunPlan: the card's description, the checks, the resources); ``build`` is the only
code that assembles Ray Data calls; ``passes`` the clusterer's fit sample and the archive-wide
curation pass; ``checks``, ``metrics``, ``result`` and ``ray_setup`` what those need.
"""
