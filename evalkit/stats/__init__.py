"""Statistics: intervals of a mean, and the paired regression gate."""
