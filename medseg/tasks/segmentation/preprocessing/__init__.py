"""Segmentation preprocessing: crop to nonzero, normalise and resample each case as its
configuration says (reversibly), for a whole dataset in parallel, resumable and atomic per case."""
