"""The example's scripted reviewer: a review batch's batch.csv with every label filled from the
image's class folder (the digits' true label), written to standard output — what a reviewer in
Label Studio would answer. For the walkthrough in docs/review-loop.md only.

    python jobs/loop/answer.py out/loop/_reviews/batches/<batch>/batch.csv > answers.csv
"""

import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1], newline="")))
writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["image_id", "label"])
writer.writeheader()
for row in rows:
    writer.writerow({**row, "label": row["uri"].rsplit("/", 2)[-2]})
