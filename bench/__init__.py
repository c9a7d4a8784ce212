"""`make bench`: every benchmark, ours next to the anchor measured in the same run."""
