"""imagegate: shared libraries and generated API code for the image-generation gateway."""
