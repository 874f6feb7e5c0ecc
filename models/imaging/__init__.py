"""Image operations on masks and photos: the guided filter, the PNG writer, overlays and the small-blob filter."""
