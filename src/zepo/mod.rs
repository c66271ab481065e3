//! ZePo: the LCM scheduler, attention control, token merging, feature cache and pipeline.
