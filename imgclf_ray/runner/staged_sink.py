"""Ray Data's Parquet writer for a run's staging folder: staged names no ``*.parquet`` glob matches,
and, with the archive-wide checks, the scan inputs kept beside what each write task staged."""

from __future__ import annotations

from ray.data._internal.datasource.parquet_datasink import ParquetDatasink
from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
from ray.data.block import BlockAccessor

from imgclf_ray.io import sink
from imgclf_ray.io.storage import join


class StagedNames:
    """Names staged files so that no ``*.parquet`` glob matches them (Ray's FilenameProvider
    interface: Ray calls ``get_filename_for_task`` and expands ``{i}`` per file)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return sink.staged_filename(write_uuid, task_index)


class StagedDatasink(ParquetDatasink):
    """Ray's Parquet datasink, which after a write task's files also writes that task's
    ``curation.archive.scan_inputs`` (one ``*.scan`` file per task, named by the write's uuid
    and the task: a retried task overwrites its own)."""

    def __init__(self, path: str, scan_columns: tuple[str, ...], **kwargs):
        super().__init__(path, filename_provider=StagedNames(), **kwargs)
        self.scan_columns = scan_columns

    def write(self, blocks, ctx) -> None:
        blocks = [b for b in blocks if BlockAccessor.for_block(b).num_rows()]
        super().write(blocks, ctx)
        if not blocks or not self.scan_columns:
            return
        from imgclf_ray.curation.archive import scan_inputs, scan_rows

        kept = [scan_rows(BlockAccessor.for_block(b).to_arrow(), self.scan_columns) for b in blocks]
        name = sink.staged_filename(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx).split("-{i}")[0]
        with self.filesystem.open_output_stream(join(self.path, name + sink.SCAN_SUFFIX)) as f:
            f.write(scan_inputs(kept, self.scan_columns))
