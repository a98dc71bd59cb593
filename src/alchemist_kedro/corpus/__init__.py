"""Setup-time corpora: the embedded default dataset (Noto emoji as webdataset shards). Not Kedro nodes."""
