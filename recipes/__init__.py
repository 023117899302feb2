"""Recipes: entry points that wire the library packages together (train, export, gate, report).

Nothing below imports this package: `fusionguard` (the core), `gate`, `monitor`, `export` and
`training` are libraries; a recipe trains, exports, times, logs to MLflow and runs the gate's
evaluation by calling them (docs/interfaces.md, "Import layers").
"""
