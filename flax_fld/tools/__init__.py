"""Stand-alone helpers: model summaries, data previews, packaging real-image check sets."""
