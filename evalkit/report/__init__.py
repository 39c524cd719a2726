"""Tables (pandas), plots and HTML, all derived from a run's records and summary."""
