"""The example's scripted reviewer: the rows of review batches' batch.csv files with every label
filled from the image's class folder (the digits' true label), as one CSV on standard output —
what a reviewer in Label Studio would answer. For the walkthrough in docs/review-loop.md only.
Answers ingested before are skipped by the ingest, so naming every batch is fine.

    python jobs/loop/answer.py out/loop/_reviews/batches/*/batch.csv > answers.csv
"""

import csv
import sys

rows = [row for name in sys.argv[1:] for row in csv.DictReader(open(name, newline=""))]
writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["image_id", "label"])
writer.writeheader()
for row in rows:
    writer.writerow({**row, "label": row["uri"].rsplit("/", 2)[-2]})
