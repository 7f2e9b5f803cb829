"""Everything a person reads: tables, plots, metric writers, progress lines and the files a run writes."""
