"""Caller input images (image-to-image, masks, references): limits, checks, one mask convention."""
