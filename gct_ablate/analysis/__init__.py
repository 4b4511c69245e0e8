"""Analysis of trained studies: gate statistics, post-hoc pruning, placement density, the report."""
