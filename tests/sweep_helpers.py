"""An executor that runs a sweep's tasks in this process, shard by shard, as a remote executor would."""

from apt_research.sweep.configuration import configuration_records
from apt_research.sweep.layout import write_records
from apt_research.sweep.notebook import end_run, start_run
from apt_research.sweep.shards import assemble_shards


class InProcessExecutor:
    """Computes each task's records per shard of images (``shards``: ``(start, stop)`` pairs, or whole runs when
    ``None``), assembles them (``assemble_shards``) and writes them as the client would (``write_records`` between ``start_run`` and
    ``end_run``)."""

    def __init__(self, shards=None):
        self.shards = shards

    def execute(self, tasks, target):
        for task in tasks:
            run_dir, status = start_run(target.sweep_dir, task.run_id, task.params)
            try:
                parts = [configuration_records(task.params, target.cache_dir, target.sweep_name, task.run_id, shard)
                         for shard in self.shards or [None]]
                write_records(run_dir, *assemble_shards(task.params, parts))
                error = None
            except Exception as failure:
                error = failure
            yield end_run(run_dir, status, error)
