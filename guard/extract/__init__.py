"""Signal extraction: text normal form, image hashes, model-file facts."""
