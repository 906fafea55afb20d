"""asv benchmarks of fastmoments (see ../asv.conf.json and docs/performance.md)."""
