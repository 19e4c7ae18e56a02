"""The one runner of the training experiments (`mnist_compare`, `local_losses`,
`estimators`) and the benchmarks that time their loop.

- `_chunks`: the training loop over compiled `lax.scan` chunks (`Program`,
  `Cache`, `Training`, `train_chunks`), single and seed/lr-batched chunk functions,
  whole-split evaluation, divergence, the progress bar.
- `_cli`: the common flags, loading the data, the output folder, resume, Ctrl-C.
- `_files`: atomic writes, runs.jsonl, `environment()`.
- `_processes`: the distributed mode (a run spanning several processes).
- `_checkpoints`: checkpoints inside a run, and resuming from them.
"""

from ._checkpoints import (
    Checkpointing as Checkpointing,
    Every as Every,
    RunCheckpoints as RunCheckpoints,
    read_checkpoint as read_checkpoint,
    run_checkpoints as run_checkpoints,
)
from ._chunks import (
    DIVERGENCE_FACTOR as DIVERGENCE_FACTOR,
    EVAL_BATCH as EVAL_BATCH,
    Cache as Cache,
    Chunk as Chunk,
    Evaluate as Evaluate,
    Program as Program,
    StackedChunks as StackedChunks,
    SteppedChunk as SteppedChunk,
    Training as Training,
    add_point as add_point,
    data_identity as data_identity,
    finite_or_none as finite_or_none,
    first_divergent_step as first_divergent_step,
    has_convolutions as has_convolutions,
    make_batched_chunk_fn as make_batched_chunk_fn,
    make_chunk_fn as make_chunk_fn,
    make_evaluate as make_evaluate,
    new_curves as new_curves,
    progress_bar as progress_bar,
    stack as stack,
    take as take,
    train_chunks as train_chunks,
    under_standard_promotion as under_standard_promotion,
)
from ._cli import (
    DATASETS as DATASETS,
    check_flags as check_flags,
    checkpointing as checkpointing,
    command as command,
    dataset_info as dataset_info,
    experiment_parser as experiment_parser,
    machine as machine,
    open_output as open_output,
    parse_lr as parse_lr,
    run_main as run_main,
    train_grid as train_grid,
)
from ._files import (
    environment as environment,
    output_dir as output_dir,
    read_runs as read_runs,
    save_figure as save_figure,
    versions as versions,
    write_atomic as write_atomic,
    write_json as write_json,
)
from ._processes import (
    agree as agree,
    check_batch_split as check_batch_split,
    is_writer as is_writer,
    local as local,
    make_train_step as make_train_step,
    processes_requested as processes_requested,
    say as say,
    shard_options as shard_options,
    start_processes as start_processes,
    train_mesh as train_mesh,
)
