"""The live tool around the engine: command line, first-run helpers and diagnostics."""
