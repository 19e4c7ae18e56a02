"""Datasets (MNIST, Fashion-MNIST, CIFAR-10) and the training input pipeline.

```python
from fwdeqx import data

ds = data.load_dataset("mnist")  # or "fashion-mnist", "mnist-5k", "cifar10"
it = data.batches(ds.train_images, ds.train_labels, batch_size=64, seed=0,
                  num_steps=1000)
x_val = data.to_float(ds.val_images)
```

**Public names:** datasets (`load_dataset`, `Dataset`, `DATASET_NAMES`,
`DATA_DIR_ENV`, `cache_dir`, `pixel_stats`, `DatasetNotFoundError`,
`DatasetFallbackWarning`), the pipeline (`batches`, `BatchIterator`, `to_float`,
`permutation`), IDX readers (`read_idx`, `read_idx_dataset`, `IdxFormatError`) and
the CIFAR-10 reader (`read_cifar10`, `CifarFormatError`).
Downloads, checksums and the dataset specifications are internal.
"""

from ._cifar import CifarFormatError as CifarFormatError, read_cifar10 as read_cifar10
from ._dataset import Dataset as Dataset, pixel_stats as pixel_stats
from ._datasets import (
    DATA_DIR_ENV as DATA_DIR_ENV,
    DatasetFallbackWarning as DatasetFallbackWarning,
    DatasetNotFoundError as DatasetNotFoundError,
    cache_dir as cache_dir,
    load_dataset as load_dataset,
)
from ._idx import IdxFormatError as IdxFormatError, read_idx as read_idx
from ._permute import permutation as permutation
from ._pipeline import (
    BatchIterator as BatchIterator,
    batches as batches,
    to_float as to_float,
)
from ._specs import DATASET_NAMES as DATASET_NAMES
from ._splits import read_idx_dataset as read_idx_dataset


__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "BatchIterator",
    "CifarFormatError",
    "Dataset",
    "DatasetFallbackWarning",
    "DatasetNotFoundError",
    "IdxFormatError",
    "batches",
    "cache_dir",
    "load_dataset",
    "permutation",
    "pixel_stats",
    "read_cifar10",
    "read_idx",
    "read_idx_dataset",
    "to_float",
]
