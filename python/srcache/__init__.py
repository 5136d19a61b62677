"""srcache: Python access to srcache shard datasets (readers, dataset, PyTorch Dataset, fusion model, template).

    import srcache
    ds = srcache.open_dataset("cache")        # plain dataset dir or merged root (local paths only)
    ds.sample(0)                             # {tensor name: numpy array}
    from srcache.torch import SRCacheDataset, FusionNet   # need torch (not a package dependency)
    python -m srcache.train --data cache --out run        # the training template (torchrun for DDP)
"""
from .dataset import CacheDataset, local_path, open_dataset
from .reader import PcaBasis, Shard, ShardError, bf16_to_f32, bicubic_u8, manifest_metadata, read_manifest

__version__ = "0.2.0"
__all__ = ["CacheDataset", "open_dataset", "local_path", "PcaBasis", "Shard", "ShardError", "bf16_to_f32", "bicubic_u8",
           "manifest_metadata", "read_manifest"]
