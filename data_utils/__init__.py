"""Everything about data: task definitions, GLUE readers, features, batching, metrics, submissions."""
