"""edgekit.core: data definitions shared by build and device. May import the stdlib only."""
