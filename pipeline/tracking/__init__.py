"""MLflow, at the side of the library: runs, their lifecycle, logged models, the registry, queries, the store check.

Only the stages and the console commands call this package, with plain values; nothing else in
`pipeline` imports it, and it is the only package that imports mlflow. `store` and `provenance` do
not import mlflow, so the validate stage checks the tracking store in a second.
"""
