"""Running a spec: configs in (config.py), samples planned and sent through the Model,
records appended and resumed (execute.py, plans.py), shards split and merged (shards.py)."""
