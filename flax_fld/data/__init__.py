"""The input pipeline and the data sets it reads (TFDS builders in datasets/)."""
