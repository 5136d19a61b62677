"""srcache: Python access to srcache shard datasets (readers, dataset, PyTorch Dataset).

    import srcache
    ds = srcache.open_dataset("cache")        # plain dataset dir or merged root
    ds.sample(0)                             # {tensor name: numpy array}
    from srcache.torch import SRCacheDataset  # needs torch (not a package dependency)
"""
from .dataset import CacheDataset, open_dataset
from .reader import PcaBasis, Shard, ShardError, bf16_to_f32, bicubic_u8, manifest_metadata, read_manifest

__version__ = "0.1.0"
__all__ = ["CacheDataset", "open_dataset", "PcaBasis", "Shard", "ShardError", "bf16_to_f32", "bicubic_u8", "manifest_metadata",
           "read_manifest"]
