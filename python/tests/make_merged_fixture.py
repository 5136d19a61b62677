"""TEST FIXTURE, not the product: assembles a MERGED ROOT by hand from finished datasets, the layout
`srcache cache --part K/N` + `srcache merge OUT` produce (see the lead's implementation for the real thing):

    OUT/parts/K-of-N/   a copy of the K-th dataset dir (shards + its own manifest)
    OUT/manifest.parquet  rows of the parts' manifests concatenated in part order, `shard` prefixed with
                          `parts/K-of-N/`; key-value metadata srcache.manifest_version = "1" and
                          srcache.parts = JSON list of the part dirs. (srcache.rows_xxh3 is NOT written: it is a
                          checksum of the Rust serde JSON of the rows, which the Python reader does not verify.)

    .venv/bin/python python/tests/make_merged_fixture.py OUT DATASET_0 DATASET_1 ...
"""
import json
import pathlib
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: make_merged_fixture.py OUT DATASET_0 [DATASET_1 ...]")
    out = pathlib.Path(sys.argv[1])
    parts = [pathlib.Path(p) for p in sys.argv[2:]]
    if (out / "manifest.parquet").exists():
        sys.exit(f"{out} already holds a manifest")
    n = len(parts)
    tables, rels = [], []
    for k, src in enumerate(parts):
        rel = f"parts/{k}-of-{n}"
        shutil.copytree(src, out / rel)
        t = pq.read_table(src / "manifest.parquet")
        shard = pa.array([f"{rel}/{s}" for s in t.column("shard").to_pylist()], pa.string())
        t = t.set_column(t.column_names.index("shard"), pa.field("shard", pa.string(), nullable=False), shard)
        tables.append(t.replace_schema_metadata(None))
        rels.append(rel)
    merged = pa.concat_tables(tables, promote_options="default")
    merged = merged.replace_schema_metadata({"srcache.manifest_version": "1", "srcache.parts": json.dumps(rels)})
    pq.write_table(merged, out / "manifest.parquet", compression="zstd")
    print(f"wrote merged root {out}: {merged.num_rows} rows from {n} parts")


if __name__ == "__main__":
    main()
